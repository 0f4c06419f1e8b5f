"""The sweep's board as artifacts of its parent run: leaderboard.csv, leaderboard.md, trials.csv
and pareto.png (also as the run's `pareto` image), written when the sweep ends (and by
`bitsweep rerun`'s sweep of one trial)."""

from __future__ import annotations

import tempfile
from contextlib import closing
from pathlib import Path
from typing import TYPE_CHECKING, Any

from PIL import Image

from runners.board import (
    MAX_LIMIT,
    board_plot,
    csv_value,
    leaderboard_rows,
    leaderboard_runs,
    reader_of,
    rows_to_csv,
    sweep_strategies,
    sweeps_board,
)
from schemas.names import Tag

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient


def log_leaderboard(
    client: MlflowClient,
    experiment_id: str,
    parent_run_id: str,
    *,
    title: str,
    sweep_id: str | None = None,
) -> dict[str, Any]:
    """Write the sweep's board (leaderboard.csv, leaderboard.md), its every trial (trials.csv,
    search and confirmation, each with its phase) and the Pareto plot of its board to its
    parent run: the board of that sweep alone (`sweep_id`, by default the parent run's).
    Returns the board (`board`), its flat `rows`, the number of `trials` and the parent run's
    `artifact_uri`."""
    parent = client.get_run(parent_run_id)
    sweep_id = sweep_id or parent.data.tags.get(Tag.SWEEP_ID)
    assert sweep_id is not None
    with closing(reader_of(client)) as reader:
        board = sweeps_board(reader, client.get_experiment(experiment_id), sweep_id=sweep_id)
    every = leaderboard_runs(
        client,
        experiment_id,
        metric="best_val_accuracy",
        mode="max",
        strategies=sweep_strategies(parent) or None,
        every_trial=True,
        sweep_id=sweep_id,
        limit=MAX_LIMIT,
    )
    flat = board.to_json()
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        (folder / "leaderboard.csv").write_text(
            rows_to_csv([{k: csv_value(v) for k, v in r.items()} for r in flat])
        )
        (folder / "leaderboard.md").write_text(board.markdown())
        (folder / "trials.csv").write_text(rows_to_csv(leaderboard_rows(every)))
        board_plot(board.rows, folder / "pareto.png", f"{title}\nsweep {sweep_id}")
        for name in ("leaderboard.csv", "leaderboard.md", "trials.csv", "pareto.png"):
            client.log_artifact(parent_run_id, str(folder / name))
        # The plot again as an image of the run: MLflow's chart view shows it with the metrics.
        with Image.open(folder / "pareto.png") as image:
            client.log_image(parent_run_id, image.convert("RGB"), key="pareto", step=0)
    return {
        "board": board,
        "rows": flat,
        "trials": len(every),
        "artifact_uri": parent.info.artifact_uri,
    }


__all__ = ["log_leaderboard"]
