"""The sweep: a spec's strategies swept as one Ray Tune experiment, Optuna choosing each trial's
params, MLflow recording every trial. `runners.sweep.run` is the door (`plan_sweep`,
`run_sweep`); `runners.sweep.worker` is all that a Ray worker imports of it. Kept empty so that
importing a light module of the sweep (the worker) loads nothing heavy."""
