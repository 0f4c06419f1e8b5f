"""The processes a second signal kills: every process below the sweep's, found through psutil."""

from __future__ import annotations

import os
import subprocess
import time

from runners.sweep.signals import _descendants


def test_descendants_are_the_children_and_their_children() -> None:
    shell = subprocess.Popen(["sh", "-c", "sleep 30 & wait"])
    try:
        deadline = time.monotonic() + 5
        while len(found := _descendants(os.getpid())) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)  # until the shell has started its sleep
        assert shell.pid in found
        assert len(set(_descendants(shell.pid)) & set(found)) == 1  # the sleep below the shell
    finally:
        shell.kill()
        shell.wait()


def test_a_process_that_is_gone_has_no_descendants() -> None:
    assert _descendants(2**22 + 12345) == []
