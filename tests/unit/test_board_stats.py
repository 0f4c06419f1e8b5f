"""The board's statistics (runners/board/stats.py) against scipy.stats on known samples, and
the selection that never reads a test metric (runners/board/selection.py)."""

from __future__ import annotations

import math

import pytest
from scipy import stats

from runners.board.selection import select
from runners.board.stats import difference, estimate, welch_p

SAMPLES = [
    ([0.91, 0.92, 0.935], [0.88, 0.90, 0.89]),
    ([0.5, 0.7], [0.6, 0.61, 0.59, 0.62]),
    ([0.8012, 0.7990, 0.8101, 0.7955, 0.8030], [0.8000, 0.8100, 0.7900]),
    ([0.1, 0.9, 0.5], [0.45, 0.55, 0.5]),
]


@pytest.mark.parametrize(("a", "b"), SAMPLES)
def test_interval_is_scipys_student_t_interval(a, b) -> None:
    for xs in (a, b):
        e = estimate(xs)
        assert e is not None and e.n == len(xs)
        low, high = stats.t.interval(0.95, len(xs) - 1, loc=stats.tmean(xs), scale=stats.sem(xs))
        assert e.mean == pytest.approx(sum(xs) / len(xs), abs=1e-12)
        assert e.std == pytest.approx(stats.tstd(xs), rel=1e-12)
        assert (e.low, e.high) == (pytest.approx(low, rel=1e-10), pytest.approx(high, rel=1e-10))


@pytest.mark.parametrize(("a", "b"), SAMPLES)
def test_welch_test_and_gap_are_scipys(a, b) -> None:
    ref = stats.ttest_ind(a, b, equal_var=False)
    assert welch_p(a, b) == pytest.approx(ref.pvalue, rel=1e-9)
    ci = ref.confidence_interval(0.95)
    gap = difference(a, b)
    assert gap is not None
    assert gap.mean == pytest.approx(sum(a) / len(a) - sum(b) / len(b), abs=1e-12)
    assert (gap.low, gap.high) == (
        pytest.approx(ci.low, rel=1e-9),
        pytest.approx(ci.high, rel=1e-9),
    )


def test_what_cannot_be_estimated_says_so() -> None:
    assert estimate([]) is None and estimate([math.nan]) is None
    one = estimate([0.9])
    assert one is not None and (one.n, one.std, one.low, one.high) == (1, None, None, None)
    flat = estimate([0.5, 0.5, 0.5])
    assert flat is not None and (flat.std, flat.low, flat.high) == (0.0, 0.5, 0.5)
    assert welch_p([0.9], [0.8, 0.7]) is None  # one seed: no test
    assert welch_p([0.5, 0.5], [0.5, 0.5]) is None  # no spread anywhere
    only = difference([0.9], [0.8, 0.7])
    assert only is not None and only.mean == pytest.approx(0.15) and only.low is None


def test_one_objective_selects_the_best_first_among_equals() -> None:
    values = {"a": 0.5, "b": 0.7, "c": 0.7, "d": math.nan}
    cands = [(k, {"best_val_accuracy": v}) for k, v in values.items()] + [("e", {})]
    assert select(cands, [("best_val_accuracy", "max")]) == ["b"]
    assert select(cands, [("best_val_accuracy", "min")]) == ["a"]
    assert select([], [("best_val_accuracy", "max")]) == []


def test_several_objectives_select_the_front_spread_along_it() -> None:
    # (val accuracy up, bits down): 0..9 is a front; x is dominated by 5.
    cands = [(i, {"best_val_accuracy": 0.5 + i / 20, "weight_bits": 100.0 + i}) for i in range(10)]
    cands.append(("x", {"best_val_accuracy": 0.6, "weight_bits": 200.0}))
    objs = [("best_val_accuracy", "max"), ("weight_bits", "min")]
    assert select(cands, objs, cap=20) == list(range(9, -1, -1))
    assert select(cands, objs, cap=3) == [9, 5, 0]  # both ends and the middle
    assert select(cands, objs, cap=1) == [9]


@pytest.mark.parametrize("metric", ["test_accuracy", "test_loss"])
def test_selection_refuses_a_test_metric(metric) -> None:
    with pytest.raises(ValueError, match="test metric"):
        select([("a", {metric: 1.0})], [(metric, "max")])


def test_the_plot_draws_any_tag_literally_and_in_many_threads_at_once(tmp_path) -> None:
    """A strategy tag holding `$...$` (math, to matplotlib) is drawn as text, and plots drawn
    at once in threads (as the service's requests are) all come out."""
    from concurrent.futures import ThreadPoolExecutor

    from runners.board.board import Budget, Row
    from runners.board.render import board_plot

    def row(name: str, acc: list[float], size: float) -> Row:
        return Row(
            strategy=name, sweep_id="s", epochs=1, selection="best_val_accuracy (max)",
            status="confirmed", run_id=name, trial_id=name, val_accuracy=0.9,
            test=estimate(acc), costs={"weight_bytes": estimate([size, size])}, budget=Budget(),
        )  # fmt: skip

    rows = [
        row("$\\frac{1}{0}$ and $", [0.9, 0.91, 0.92], 1000.0),
        row("wrn_1bit", [0.8, 0.82, 0.81], 100.0),
    ]

    def draw(i: int) -> int:
        path = tmp_path / f"p{i}.png"
        board_plot(rows, path, f"title ${i}")
        return path.stat().st_size

    with ThreadPoolExecutor(max_workers=6) as pool:
        sizes = list(pool.map(draw, range(12)))
    assert all(size > 1000 for size in sizes)
