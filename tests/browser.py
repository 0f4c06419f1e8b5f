"""A real browser for the tests of the page: Debian's Chromium, headless, from its command line
(`--dump-dom`, `--screenshot`), and a check that a screenshot shows a table.

Chromium is part of the test environment (CI installs Debian's `chromium` package): a test that
needs it fails, saying so, when it is absent; it is never skipped.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import numpy as np

CHROMIUM = Path("/usr/bin/chromium")
TIMEOUT_S = 60.0
# Root-safe (no sandbox as root), no GPU, and nothing that reaches out to the network by itself:
# this machine's network is closed, and Chromium's background connections are refused.
FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)
# The colours of the page's tables (service/templates/index.html).
HEADER_RGB = (0xEE, 0xEE, 0xFF)  # th { background: #eef }
BORDER_RGB = (0xCC, 0xCC, 0xCC)  # th, td { border: 1px solid #ccc }


class BrowserError(AssertionError):
    """Chromium did not run, failed, or ran past its timeout."""


def _chromium(args: list[str], timeout: float) -> subprocess.CompletedProcess[str]:
    if not CHROMIUM.exists():
        raise BrowserError(
            f"{CHROMIUM} is missing: install Debian's chromium package "
            "(apt-get install chromium; CI installs it) to run the tests of the page"
        )
    with tempfile.TemporaryDirectory(prefix="bitsweep-chromium-", ignore_cleanup_errors=True) as d:
        env = {**os.environ, "DBUS_SESSION_BUS_ADDRESS": "disabled:"}
        cmd = [str(CHROMIUM), *FLAGS, f"--user-data-dir={d}", *args]
        try:
            done = subprocess.run(
                cmd, capture_output=True, text=True, timeout=timeout, env=env, check=False
            )
        except subprocess.TimeoutExpired as e:
            err = e.stderr.decode(errors="replace") if isinstance(e.stderr, bytes) else e.stderr
            raise BrowserError(
                f"chromium ran past {timeout:.0f} s: {' '.join(cmd)}\nstderr:\n{_tail(err)}"
            ) from None
    if done.returncode != 0:
        raise BrowserError(
            f"chromium exited {done.returncode}: {' '.join(cmd)}\nstderr:\n{_tail(done.stderr)}"
        )
    return done


def _tail(text: str | None, lines: int = 40) -> str:
    return "\n".join((text or "").splitlines()[-lines:]) or "(empty)"


def dump_dom(url: str, timeout: float = TIMEOUT_S) -> str:
    """The DOM of `url` after Chromium has loaded it, serialized as HTML."""
    done = _chromium(["--dump-dom", url], timeout)
    if "<html" not in done.stdout:
        raise BrowserError(f"chromium printed no DOM for {url}\nstderr:\n{_tail(done.stderr)}")
    return done.stdout


def screenshot(
    url: str, path: str | Path, width: int = 1280, height: int = 1600, timeout: float = TIMEOUT_S
) -> Path:
    """A PNG screenshot of `url` in a `width` x `height` window, written to `path`."""
    path = Path(path).resolve()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.unlink(missing_ok=True)
    args = [f"--screenshot={path}", f"--window-size={width},{height}", url]
    done = _chromium(args, timeout)
    if not path.is_file() or path.stat().st_size == 0:
        raise BrowserError(f"chromium wrote no screenshot of {url}\nstderr:\n{_tail(done.stderr)}")
    return path


def read_rgb(path: str | Path) -> np.ndarray:
    """The image at `path` as an (height, width, 3) array of uint8."""
    from PIL import Image

    with Image.open(path) as im:
        return np.asarray(im.convert("RGB"))


def _runs(mask: np.ndarray) -> np.ndarray:
    """The longest run of True along the last axis of a 2-D mask, per row."""
    longest = np.zeros(mask.shape[0], dtype=int)
    current = np.zeros(mask.shape[0], dtype=int)
    for col in mask.T:
        current = np.where(col, current + 1, 0)
        longest = np.maximum(longest, current)
    return longest


def _groups(indices: np.ndarray) -> list[tuple[int, int]]:
    """Consecutive indices as (first, last) pairs."""
    out: list[tuple[int, int]] = []
    for i in indices.tolist():
        if out and i == out[-1][1] + 1:
            out[-1] = (out[-1][0], i)
        else:
            out.append((i, i))
    return out


def table_grid(path: str | Path) -> dict[str, object]:
    """What a screenshot shows of the page's tables: its distinct colours, the share of its
    commonest colour, the header bands (rows of pixels with 100 or more of the header colour,
    grouped), the horizontal border lines (a run of 100 px or more of the border colour) and
    the vertical ones (a run of 20 px or more)."""
    rgb = read_rgb(path)
    packed = rgb.astype(np.uint32) @ np.array([1 << 16, 1 << 8, 1], dtype=np.uint32)
    counts = np.bincount(packed.ravel())
    counts = counts[counts > 0]
    header = np.all(rgb == HEADER_RGB, axis=-1)
    border = np.all(rgb == BORDER_RGB, axis=-1)
    bands = _groups(np.flatnonzero(header.sum(axis=1) >= 100))
    horizontal = _groups(np.flatnonzero(_runs(border) >= 100))
    vertical = _groups(np.flatnonzero(_runs(border.T) >= 20))
    return {
        "size": (rgb.shape[1], rgb.shape[0]),
        "colours": len(counts),
        "commonest_share": float(counts.max() / counts.sum()),
        "header_bands": [(a, b) for a, b in bands if b - a + 1 >= 8],
        "horizontal_lines": horizontal,
        "vertical_lines": vertical,
    }


def assert_shows_table(path: str | Path, rows: int = 1) -> dict[str, object]:
    """Fail unless the screenshot at `path` is not blank and shows a table of the page with a
    header and at least `rows` body rows: (a) 16 or more distinct colours and no colour over
    99.5% of the pixels; (b) a header band of #eef at least 8 px tall; at least `rows` + 2
    horizontal #ccc lines (above the header, below it, below each row), one of them above the
    band and `rows` + 1 below it; and 3 or more vertical #ccc lines (the columns' borders)."""
    grid = table_grid(path)
    problems = []
    if grid["colours"] < 16 or grid["commonest_share"] > 0.995:  # type: ignore[operator]
        problems.append(
            f"the screenshot is blank: {grid['colours']} colours, the commonest covers "
            f"{grid['commonest_share']:.1%} of it"
        )
    bands = grid["header_bands"]
    lines = grid["horizontal_lines"]
    if not bands:
        problems.append("no table header: no band of #eef 8 px tall and 100 px wide")
    else:
        top, bottom = bands[0]  # type: ignore[index]
        above = [ln for ln in lines if ln[1] < top]  # type: ignore[union-attr]
        below = [ln for ln in lines if ln[0] > bottom]  # type: ignore[union-attr]
        if not above or len(below) < rows + 1:
            problems.append(
                f"no table grid around the header band at y={top}-{bottom}: {len(above)} #ccc "
                f"line(s) above it and {len(below)} below (want 1 and {rows + 1})"
            )
    if len(grid["vertical_lines"]) < 3:  # type: ignore[arg-type]
        problems.append(f"{len(grid['vertical_lines'])} vertical #ccc lines (want 3 or more)")  # type: ignore[arg-type]
    if problems:
        raise AssertionError(f"{path} does not show a table: " + "; ".join(problems) + f" {grid}")
    return grid
