"""A sweep's terminal shows bitsweep's own lines: Ray's, Tune's and Optuna's logs and Python's
warnings go to the data directory's `bitsweep.log` while it runs, and back after."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import pytest

from runners.sweep.quiet import third_party_to_log


def test_third_party_lines_go_to_the_log_and_come_back_after(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], caplog: pytest.LogCaptureFixture
) -> None:
    ray_logger = logging.getLogger("ray.tune")
    own = logging.getLogger("runners.sweep.run")
    path = tmp_path / "home" / "bitsweep.log"
    stream = logging.StreamHandler()  # as Ray gives its logger one
    logging.getLogger("ray").addHandler(stream)
    try:
        with third_party_to_log(path):
            pass
        assert not path.parent.exists()  # nothing logged, nothing written
        with third_party_to_log(path) as kept:
            ray_logger.warning("to resume, call Tuner.restore(path=...)")
            logging.getLogger("optuna").warning("an optuna notice")
            warnings.warn("an experimental call", UserWarning, stacklevel=1)
            own.error("bitsweep's own error line")
        assert kept.count == 3
        text = path.read_text()
        assert "Tuner.restore" in text and "an optuna notice" in text
        assert "an experimental call" in text
        err = capsys.readouterr().err
        assert "Tuner.restore" not in err and "experimental" not in err
        assert "bitsweep's own error line" in caplog.text  # bitsweep's loggers: as they were
        # After the sweep, Ray's handler is its own again.
        assert stream in logging.getLogger("ray").handlers
        ray_logger.warning("after the sweep")
        assert "after the sweep" in capsys.readouterr().err
    finally:
        logging.getLogger("ray").removeHandler(stream)
