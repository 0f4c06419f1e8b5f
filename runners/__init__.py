"""Runners: data, models, one trial's training loop, sweeps."""
