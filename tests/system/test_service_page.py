"""The leaderboard page at `/`, in a real browser (headless Chromium), served by a real uvicorn
from an MLflow store that a real small sweep filled: its table, its Pareto plot, its links into
the MLflow UI, and its sorting by links, without JavaScript."""

from __future__ import annotations

import contextlib
import re
import socket
import threading
import time
from collections.abc import Iterator
from html.parser import HTMLParser
from pathlib import Path
from typing import Any
from urllib.parse import urljoin

import httpx
import pytest
import uvicorn
from browser import assert_shows_table, dump_dom, screenshot
from mlflow.tracking import MlflowClient

from runners.sweep.run import plan_sweep, run_sweep
from schemas.sweep import SweepSpec
from service.http.app import create_app
from service.settings import load_settings

pytestmark = [pytest.mark.slow]

MLFLOW_UI = "http://mlflow.example:5000"
STRATEGIES = ("full_precision", "bit_learning")
RUN_LINK = re.compile(
    re.escape(MLFLOW_UI) + r"/#/experiments/(?P<experiment>[0-9]+)/runs/(?P<run>[0-9a-f]{32})$"
)
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


@contextlib.contextmanager
def serving(home: Path) -> Iterator[str]:
    """The service of `home` (no Ray jobs) on a real uvicorn on 127.0.0.1: its base URL."""
    app = create_app(load_settings(home=str(home), mlflow_ui_url=MLFLOW_UI), run_jobs=False)
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    base = f"http://127.0.0.1:{sock.getsockname()[1]}"
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", lifespan="on"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{base}/health", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if not thread.is_alive() or time.monotonic() > deadline:
                raise AssertionError(f"the service did not answer {base}/health within 30 s")
            time.sleep(0.1)
        yield base
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


class Page(HTMLParser):
    """What the tests read of a page: its tables (class, header cells, body rows; each cell
    its text and links), its images and its scripts."""

    def __init__(self, html: str) -> None:
        super().__init__()
        self.tables: list[dict[str, Any]] = []
        self.images: list[dict[str, str | None]] = []
        self.scripts = 0
        self._cell: dict[str, Any] | None = None
        self._row: list[dict[str, Any]] | None = None
        self._in_head = False
        self.feed(html)
        self.close()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "script":
            self.scripts += 1
        elif tag == "img":
            self.images.append(a)
        elif tag == "table":
            self.tables.append({"class": a.get("class"), "head": [], "rows": []})
        elif tag == "thead":
            self._in_head = True
        elif tag == "tbody":
            self._in_head = False
        elif tag == "tr":
            self._row = []
        elif tag in ("td", "th"):
            self._cell = {"text": "", "links": []}
        elif tag == "a" and self._cell is not None:
            self._cell["links"].append(a.get("href"))

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "th") and self._cell is not None and self._row is not None:
            self._cell["text"] = self._cell["text"].strip()
            self._row.append(self._cell)
            self._cell = None
        elif tag == "tr" and self._row is not None and self.tables:
            self.tables[-1]["head" if self._in_head else "rows"].append(self._row)
            self._row = None

    def handle_data(self, data: str) -> None:
        if self._cell is not None:
            self._cell["text"] += data

    def leaderboards(self) -> list[dict[str, Any]]:
        return [t for t in self.tables if t["class"] == "leaderboard"]


def board(html: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The one leaderboard table of a page: its header cells and its body rows as dicts
    keyed by header (the sort mark removed)."""
    boards = Page(html).leaderboards()
    assert len(boards) == 1, f"want one table.leaderboard, found {len(boards)}"
    (head,) = boards[0]["head"]
    names = [c["text"].rstrip(" ▲▼") for c in head]
    rows = [dict(zip(names, row, strict=True)) for row in boards[0]["rows"]]
    return head, rows


@pytest.fixture(scope="module")
def swept(tmp_path_factory, local_ray) -> dict[str, Any]:
    """A home whose MLflow store holds a real sweep: two strategies, two trials each."""
    home = tmp_path_factory.mktemp("page") / "bitsweep-data"
    spec = SweepSpec.model_validate(
        {
            "name": "page",
            "dataset": "digits",
            "model": "mlp",
            "epochs": 1,
            "trials_per_strategy": 2,
            "max_failures": 0,
            "confirmation": {"seeds": 2},
            "strategies": [{"name": s} for s in STRATEGIES],
        }
    )
    plan = plan_sweep(spec, home=home)
    summary = run_sweep(plan)
    assert summary.completed == 4 + 4, summary
    client = MlflowClient(plan.tracking_uri)
    experiment = client.get_experiment_by_name("bitsweep/digits/mlp").experiment_id
    return {"home": home, "summary": summary, "experiment": experiment}


@pytest.fixture(scope="module")
def base(swept) -> Iterator[str]:
    with serving(swept["home"]) as url:
        yield url


def test_page_shows_one_row_per_strategy_with_mlflow_links_and_its_pareto_plot(base, swept):
    dom = dump_dom(f"{base}/")
    page = Page(dom)
    assert page.scripts == 0 and "<script" not in dom.lower()
    raw = httpx.get(f"{base}/", timeout=30)
    assert raw.status_code == 200 and "<script" not in raw.text.lower()
    assert '<table class="leaderboard">' in dom

    _, rows = board(dom)
    assert sorted(r["strategy"]["text"] for r in rows) == sorted(STRATEGIES)
    best = swept["summary"].best
    for r in rows:
        (link,) = r["strategy"]["links"]
        m = RUN_LINK.match(link or "")
        assert m, f"{link!r} is no link to a run in the MLflow UI"
        assert m["experiment"] == swept["experiment"]
        assert m["run"] == best[r["strategy"]["text"]]["run_id"]
        mean, pm, std = r[ACCURACY]["text"].split()
        assert 0.0 < float(mean) <= 1.0 and pm == "±" and float(std) >= 0
        assert r["seeds"]["text"] == "2" and r["status"]["text"] == "confirmed"
        low, high = (float(x) for x in r["95% CI"]["text"].strip("[]").split(", "))
        assert low <= float(mean) <= high
    assert f"sweep {swept['summary'].sweep_id}, 1 epoch: selected on best_val_accuracy" in dom
    assert f'href="{MLFLOW_UI}/#/experiments/{swept["experiment"]}"' in dom

    (img,) = [i for i in page.images if "pareto" in (i.get("src") or "")]
    png = httpx.get(urljoin(f"{base}/", img["src"]), timeout=60)
    assert png.status_code == 200
    assert png.headers["content-type"] == "image/png"
    assert png.content.startswith(PNG_MAGIC) and len(png.content) > 1000


ACCURACY = "test accuracy (mean ± std)"


def _accuracies(rows: list[dict[str, Any]]) -> list[float]:
    return [float(r[ACCURACY]["text"].split()[0]) for r in rows]


def _sort_link(head: list[dict[str, Any]], header: str) -> str:
    (cell,) = [c for c in head if c["text"].rstrip(" ▲▼") == header]
    (href,) = cell["links"]
    return href


def test_sorting_follows_links_without_javascript(base):
    head, rows = board(dump_dom(f"{base}/"))
    assert [int(r["#"]["text"]) for r in rows] == [1, 2]  # by rank at first

    url = urljoin(f"{base}/", _sort_link(head, ACCURACY))
    assert url.endswith("?sort=test_accuracy&order=asc")
    head, rows = board(dump_dom(url))
    up = _accuracies(rows)
    assert up == sorted(up)
    assert _sort_link(head, ACCURACY).endswith("?sort=test_accuracy&order=desc")
    assert any(c["text"] == f"{ACCURACY} ▲" for c in head)

    url = urljoin(url, _sort_link(head, ACCURACY))
    head, rows = board(dump_dom(url))
    down = _accuracies(rows)
    assert down == sorted(down, reverse=True)
    assert any(c["text"] == f"{ACCURACY} ▼" for c in head)
    if len(set(up)) == len(up):
        assert down == up[::-1]

    head, rows = board(dump_dom(f"{base}/?sort=strategy&order=desc"))
    assert [r["strategy"]["text"] for r in rows] == sorted(STRATEGIES, reverse=True)


def test_screenshot_shows_the_leaderboard_and_the_check_refuses_pages_without_it(base, tmp_path):
    shot = screenshot(f"{base}/", tmp_path / "leaderboard.png")
    assert_shows_table(shot, rows=2)

    blank = screenshot("data:text/html,", tmp_path / "blank.png")
    with pytest.raises(AssertionError, match="blank"):
        assert_shows_table(blank)
    # The same page with its leaderboard table taken out: heading, text, plot, no table.
    html = httpx.get(f"{base}/", timeout=30).text
    cut = re.sub(r'<table class="leaderboard">.*?</table>', "", html, flags=re.S)
    assert cut != html and "<table" not in cut
    cut = cut.replace("<head>", f'<head><base href="{base}/">', 1)  # the plot still loads
    without = tmp_path / "without-table.html"
    without.write_text(cut, encoding="utf-8")
    no_table = screenshot(without.as_uri(), tmp_path / "without-table.png")
    with pytest.raises(AssertionError, match="no table header"):
        assert_shows_table(no_table)


def test_a_refusal_is_a_page_that_says_why(base):
    for query, field in (({"sort": "bogus"}, "sort"), ({"order": "sideways"}, "order")):
        r = httpx.get(f"{base}/", params=query, timeout=30)
        assert r.status_code == 422 and r.headers["content-type"].startswith("text/html")
        assert f"<code>{field}</code>: must be" in r.text, r.text
    r = httpx.get(f"{base}/board/no-such-sweep", timeout=30)
    assert r.status_code == 404 and "<code>sweep_id</code>: no sweep no-such-sweep" in r.text
    assert 'href="/"' in r.text  # a way back


def _add_rows(home: Path, swept_id: str) -> None:
    """The service's rows of the page's sweeps: the one that ran, and one still queued."""
    from service.db import Status, SweepRow, engine_for, sessions, utcnow

    engine = engine_for(f"sqlite:///{home / 'service.db'}")
    with sessions(engine)() as s, s.begin():
        for seq, (sid, status) in enumerate(
            ((swept_id, Status.succeeded), ("page-waiting", Status.queued)), 100
        ):
            if s.get(SweepRow, sid) is None:
                s.add(
                    SweepRow(
                        id=sid, seq=seq, name="page", spec={}, status=status,
                        benchmark="bitsweep/digits/mlp", submitted_by="ci",
                        finished_at=utcnow() if status == Status.succeeded else None,
                    )
                )  # fmt: skip
    engine.dispose()


def test_a_sweeps_page_shows_its_board_strategies_plot_and_log(base, swept):
    sid = swept["summary"].sweep_id
    _add_rows(swept["home"], sid)
    dom = dump_dom(f"{base}/board/{sid}")
    page = Page(dom)
    assert page.scripts == 0
    _, rows = board(dom)
    assert sorted(r["strategy"]["text"] for r in rows) == sorted(STRATEGIES)
    assert all(r["seeds"]["text"] == "2" for r in rows)  # the evidence behind each row
    for name in STRATEGIES:  # each strategy said: its paper, summary and docs page
        assert f'id="strategy-{name}"' in dom and f"docs/strategies/{name}.md" in dom
    (img,) = [i for i in page.images if "pareto" in (i.get("src") or "")]
    assert f"sweep={sid}" in img["src"]
    png = httpx.get(urljoin(f"{base}/", img["src"]), timeout=60)
    assert png.status_code == 200 and png.content.startswith(PNG_MAGIC)
    assert 'id="no-log"' in dom  # this service ran no job for it

    waiting = dump_dom(f"{base}/board/page-waiting")
    assert 'id="no-board"' in waiting and "its board appears here once one finishes" in waiting
    assert "the sweep waits for its turn" in waiting

    index = dump_dom(f"{base}/")
    assert f'href="/board/{sid}"' in index and 'href="/board/page-waiting"' in index
    assert 'id="strategy-bit_learning"' in index


def test_a_missing_chromium_fails_saying_to_install_it(monkeypatch, tmp_path):
    import browser

    monkeypatch.setattr(browser, "CHROMIUM", tmp_path / "no-chromium")
    with pytest.raises(AssertionError, match="install Debian's chromium package"):
        browser.dump_dom("data:text/html,")
    with pytest.raises(AssertionError, match="install Debian's chromium package"):
        browser.screenshot("data:text/html,", tmp_path / "x.png")
