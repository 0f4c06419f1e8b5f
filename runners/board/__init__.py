"""The leaderboard reader: MLflow's records of sweeps read back as ranked boards, tables and a
Pareto plot. Imports neither torch nor Ray, so that the service and the CLI read a board without
loading a trainer; the one module bound to MLflow's tables is `runners.board.tables`.

Its door is this module: every other package imports the names below from `runners.board`.

- `query`: `query_leaderboard`, the boards of a store (`Board`), the service's `sweep_runs`
  and `pareto_png`;
- `board`, `selection`, `stats`: one row per selected config, its confirmed mean with its
  spread, Welch's test against row 1;
- `ranking`, `rows`: every trial ranked, as flat rows;
- `read`, `tables`: what is read, through `MlflowClient` or MLflow's tables;
- `render`: markdown, CSV, table cells and the Pareto plot;
- `store`, `reach`: which store a read may use, and why one cannot be reached.
"""

from runners.board.board import Budget, Row, SweepInfo, as_int
from runners.board.query import (
    Board,
    SweepRuns,
    benchmark_of,
    board_of,
    pareto_png,
    query_leaderboard,
    reader_of,
    store_version,
    sweep_runs,
    sweep_title,
    sweeps_board,
)
from runners.board.ranking import (
    BOARD_METRICS,
    MAX_LIMIT,
    SWEEP_ID_PATTERN,
    check_query,
    leaderboard_runs,
    q,
    sweep_strategies,
    trial_strategies,
)
from runners.board.read import is_database_uri
from runners.board.render import (
    board_plot,
    csv_value,
    format_cell,
    rows_markdown,
    rows_to_csv,
    rows_to_markdown,
)
from runners.board.rows import BoardRow, board_rows, leaderboard_rows, several_sweeps
from runners.board.store import check_read_store, client_of, default_store

__all__ = [
    "BOARD_METRICS",
    "MAX_LIMIT",
    "SWEEP_ID_PATTERN",
    "Board",
    "BoardRow",
    "Budget",
    "Row",
    "SweepInfo",
    "SweepRuns",
    "as_int",
    "benchmark_of",
    "board_of",
    "board_plot",
    "board_rows",
    "check_query",
    "check_read_store",
    "client_of",
    "csv_value",
    "default_store",
    "format_cell",
    "is_database_uri",
    "leaderboard_rows",
    "leaderboard_runs",
    "pareto_png",
    "q",
    "query_leaderboard",
    "reader_of",
    "rows_markdown",
    "rows_to_csv",
    "rows_to_markdown",
    "several_sweeps",
    "store_version",
    "sweep_runs",
    "sweep_strategies",
    "sweep_title",
    "sweeps_board",
    "trial_strategies",
]
