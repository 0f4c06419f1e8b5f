"""`python -m service.cli`: the `bitsweep` executable (the service's Ray jobs run sweeps so)."""

from service.cli import entry

entry()
