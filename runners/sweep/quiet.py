"""Third-party lines kept out of a sweep's terminal: what Ray, Ray Tune and Optuna log, and
Python warnings, go to the data directory's `bitsweep.log` while a sweep runs, so that a person
sees bitsweep's own lines (its progress table or events, its errors) and one final table.

Ray logs through its own handlers on the `ray` logger (its token-auth notice at every start,
Tune's advice to call `Tuner.restore` after Ctrl-C, which a bitsweep user does with
`--resume`, and the files a resumed experiment no longer finds); Optuna through `optuna`'s;
MLflow through `mlflow`'s (a new store's "Creating initial MLflow database tables");
`warnings.warn` (Optuna's ExperimentalWarning) through `py.warnings` once captured. Their
handlers that write to the terminal are set aside and given back when the sweep ends.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from pathlib import Path
from typing import Any

LOGGERS = ("ray", "optuna", "mlflow", "py.warnings")
FORMAT = "%(asctime)s %(levelname)s %(name)s: %(message)s"


class Kept(logging.FileHandler):
    """A file handler that counts what it kept, and creates its file (and folder) only with
    the first record: a sweep refused before it starts writes nothing."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, encoding="utf-8", delay=True)
        self.setFormatter(logging.Formatter(FORMAT))
        self.count = 0

    def _open(self) -> Any:
        Path(self.baseFilename).parent.mkdir(parents=True, exist_ok=True)
        return super()._open()

    def emit(self, record: logging.LogRecord) -> None:
        self.count += 1
        super().emit(record)


def _to_terminal(handler: logging.Handler) -> bool:
    return isinstance(handler, logging.StreamHandler) and not isinstance(
        handler, logging.FileHandler
    )


@contextlib.contextmanager
def third_party_to_log(path: Path) -> Iterator[Kept]:
    """While it lasts, what `LOGGERS` log and Python's warnings go to `path` (appended), not to
    the terminal. Yields the handler: `count` is how many records it kept."""
    kept = Kept(path)
    saved: list[tuple[logging.Logger, list[logging.Handler], bool]] = []
    logging.captureWarnings(True)
    try:
        for name in LOGGERS:
            logger = logging.getLogger(name)
            terminal = [h for h in logger.handlers if _to_terminal(h)]
            saved.append((logger, terminal, logger.propagate))
            for h in terminal:
                logger.removeHandler(h)
            logger.addHandler(kept)
            logger.propagate = False
        yield kept
    finally:
        for logger, terminal, propagate in saved:
            logger.removeHandler(kept)
            for h in terminal:
                logger.addHandler(h)
            logger.propagate = propagate
        logging.captureWarnings(False)
        kept.close()


__all__ = ["third_party_to_log"]
