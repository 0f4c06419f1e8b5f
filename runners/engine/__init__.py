"""The one-trial engine: datasets, models, one trial's training loop and the export of its
deployed weights. Imports torch, strategies and schemas; never Ray, Optuna or MLflow, so that a
trial runs in any process (a Ray worker, the CLI's `train`, a benchmark)."""
