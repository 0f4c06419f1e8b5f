"""The processes a second signal kills: every process below the sweep's, found through psutil."""

from __future__ import annotations

import os
import subprocess

from runners.sweep.signals import _descendants


def test_descendants_are_the_children_and_their_children() -> None:
    shell = subprocess.Popen(["sh", "-c", "sleep 30 & wait"])
    try:
        for _ in range(100):
            found = _descendants(os.getpid())
            if len(found) >= 2:
                break
            os.sched_yield()
            subprocess.run(["sleep", "0.02"], check=True)
        assert shell.pid in found
        assert len(set(_descendants(shell.pid)) & set(found)) == 1  # the sleep below the shell
    finally:
        shell.kill()
        shell.wait()


def test_a_process_that_is_gone_has_no_descendants() -> None:
    done = subprocess.run(["true"], check=True)
    assert done.returncode == 0
    assert _descendants(2**22 + 12345) == []
