"""A ranked trial as one flat row: what `--every-trial`, trials.csv and the trial tables show."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from runners.board.board import as_int
from schemas.names import LEADERBOARD_COLUMNS, Tag

if TYPE_CHECKING:
    from mlflow.entities import Run


@dataclass(frozen=True)
class BoardRow:
    """One ranked finished trial."""

    rank: int
    strategy: str
    run_id: str
    run_name: str
    trial_id: str
    sweep_id: str
    epochs: int | None
    metrics: dict[str, float]
    """`LEADERBOARD_COLUMNS` and the ranking metrics, those the run has."""

    phase: str = "search"

    def to_dict(self) -> dict[str, Any]:
        """The flat row of the JSON and CSV: ids, then every leaderboard column (None where
        the run lacks it), then any other ranking metric."""
        extra = {k: v for k, v in self.metrics.items() if k not in LEADERBOARD_COLUMNS}
        return {
            "rank": self.rank,
            "strategy": self.strategy,
            "phase": self.phase,
            "run_id": self.run_id,
            "run_name": self.run_name,
            "trial_id": self.trial_id,
            "sweep_id": self.sweep_id,
            "epochs": self.epochs,
            **{k: self.metrics.get(k) for k in LEADERBOARD_COLUMNS},
            **extra,
        }


def trial_row(
    rank: int,
    run_id: str,
    run_name: str,
    tags: Mapping[str, str],
    params: Mapping[str, str],
    metrics: Mapping[str, float],
    ranking: Sequence[str] = (),
) -> BoardRow:
    """The row of one ranked run, from its tags, params and metrics; its metrics are the
    leaderboard's columns and `ranking`."""
    keys = [*LEADERBOARD_COLUMNS, *(k for k in ranking if k not in LEADERBOARD_COLUMNS)]
    epochs = as_int(params.get("epochs"))
    return BoardRow(
        rank=rank,
        strategy=tags.get(Tag.STRATEGY, ""),
        run_id=run_id,
        run_name=run_name,
        trial_id=tags.get(Tag.TRIAL_ID, ""),
        sweep_id=tags.get(Tag.SWEEP_ID, ""),
        epochs=epochs if epochs is not None else as_int(metrics.get("epochs")),
        metrics={k: metrics[k] for k in keys if k in metrics},
        phase=tags.get(Tag.PHASE, "search"),
    )


def board_rows(runs: list[Run], ranking: Sequence[str] = ()) -> list[BoardRow]:
    """The rows of ranked runs."""
    return [
        trial_row(
            rank,
            run.info.run_id,
            run.info.run_name or "",
            run.data.tags,
            run.data.params,
            run.data.metrics,
            ranking,
        )
        for rank, run in enumerate(runs, 1)
    ]


def listed_rows(tables: Any, ids: list[str], ranking: Sequence[str] = ()) -> list[BoardRow]:
    """The rows of ranked run ids, read from MLflow's tables (`runners.board.tables`)."""
    keys = [*LEADERBOARD_COLUMNS, *(k for k in ranking if k not in LEADERBOARD_COLUMNS)]
    tag_keys = [Tag.STRATEGY, Tag.TRIAL_ID, Tag.SWEEP_ID, Tag.PHASE]
    listed = tables.listed(ids, tag_keys, [*keys, "epochs"])
    return [
        trial_row(rank, run_id, name, tags, params, metrics, ranking)
        for rank, (run_id, name, tags, params, metrics) in enumerate(listed, 1)
    ]


def leaderboard_rows(runs: list[Run]) -> list[dict[str, Any]]:
    """The flat rows (`BoardRow.to_dict`) of ranked runs."""
    return [r.to_dict() for r in board_rows(runs)]


def several_sweeps(rows: list[dict[str, Any]]) -> bool:
    """Whether flat rows come from more than one sweep."""
    return len({r.get("sweep_id") for r in rows}) > 1


__all__ = [
    "BoardRow",
    "board_rows",
    "leaderboard_rows",
    "listed_rows",
    "several_sweeps",
    "trial_row",
]
