"""Every name that crosses a process or a store, defined once: MLflow tag keys, Optuna trial
attributes, Tune result keys, file names, metric columns and environment variables.

A new metric is added to `TRIAL_METRICS` (and, if a sweep may optimize it, nowhere else: the
objectives are the trial metrics); a new tag to `Tag`. Plain constants: importable from every
layer, including a Ray worker, at no cost.
"""

from __future__ import annotations

from typing import Final

# A sweep's id: the MLflow tag, the state file's name, the Ray job's submission id, a path of
# the API. Matched whole (`re.fullmatch`, or the anchored form).
SWEEP_ID: Final = r"[A-Za-z0-9][A-Za-z0-9_.-]{0,127}"
SWEEP_ID_ANCHORED: Final = rf"^{SWEEP_ID}$"


# The run description MLflow's UI shows (a run's or an experiment's).
NOTE_TAG: Final = "mlflow.note.content"
# The size of a trial's deployed (packed) weights file, beside `weight_bytes`.
DEPLOYED_FILE_METRIC: Final = "deployed_file_bytes"
# A trial's seed, a param, logged again as a metric: the board reads it with the run's numbers.
SEED_METRIC: Final = "seed"
# Validation accuracy at optimizer steps, logged when a trial sets `val_every_steps`.
STEP_CURVE_METRIC: Final = "val_accuracy_by_step"
# A view of MLflow's run table saved on a benchmark's experiment (MLflow's "shared view": the
# tag `mlflow.sharedViewState.<key>`, opened by `?viewStateShareKey=<key>` on its runs page):
# the confirmation runs grouped by strategy with their means, the board's columns.
SHARED_VIEW_TAG_PREFIX: Final = "mlflow.sharedViewState."
BOARD_VIEW_KEY: Final = "bitsweep-board"
# MLflow's experiment kind (the UI's "experiment type"): a benchmark is a model-training one.
EXPERIMENT_KIND_TAG: Final = "mlflow.experimentKind"
TRAINING_KIND: Final = "custom_model_development"


class Tag:
    """MLflow tag keys that bitsweep writes and reads."""

    SWEEP_ID: Final = "bitsweep.sweep_id"
    TRIAL_ID: Final = "bitsweep.trial_id"
    STRATEGY: Final = "bitsweep.strategy"
    STRATEGIES: Final = "bitsweep.strategies"
    DATASET: Final = "bitsweep.dataset"
    MODEL: Final = "bitsweep.model"
    VERSION: Final = "bitsweep.version"
    KIND: Final = "bitsweep.kind"
    NODE: Final = "bitsweep.node"
    DEVICE: Final = "bitsweep.device"
    THREADS: Final = "bitsweep.threads"
    TORCH: Final = "bitsweep.torch"
    GIT_COMMIT: Final = "bitsweep.git_commit"
    OBJECTIVES: Final = "bitsweep.objectives"
    REFUSED: Final = "bitsweep.refused"
    ERROR: Final = "bitsweep.error"
    ERROR_FIELD: Final = "bitsweep.error_field"
    ENDED_BY: Final = "bitsweep.ended_by"
    INTERRUPTED: Final = "bitsweep.interrupted"
    LOST: Final = "bitsweep.lost"
    RETRIED: Final = "bitsweep.retried"
    STOPPED_EARLY: Final = "bitsweep.stopped_early"
    CONTINUES_TRIAL: Final = "bitsweep.continues_trial"
    TUNE_TRIAL_ID: Final = "bitsweep.tune_trial_id"
    TRIAL_NUMBER: Final = "bitsweep.trial_number"
    OPTUNA_STUDY: Final = "bitsweep.optuna_study"
    OPTUNA_TRIAL: Final = "bitsweep.optuna_trial"
    STRATEGY_DISTRIBUTION: Final = "bitsweep.strategy_distribution"
    STRATEGY_VERSION: Final = "bitsweep.strategy_version"
    # A trial run's phase (`Phase`); a confirmation run names the search trial it confirms.
    PHASE: Final = "bitsweep.phase"
    CONFIRMS: Final = "bitsweep.confirms"  # the confirmed search trial's MLflow run id
    CONFIRMS_TRIAL: Final = "bitsweep.confirms_trial"  # and its trial id
    # A sweep's parent run: the validation objectives it selected on, and the fresh seeds of
    # each confirmation ("0": confirmation off). A parent run without them was recorded
    # before bitsweep 0.2, when a sweep selected on its objective, often the test split.
    SELECTION: Final = "bitsweep.selection"
    CONFIRM_SEEDS: Final = "bitsweep.confirm_seeds"
    PARENT_RUN: Final = "mlflow.parentRunId"


def literal(value: str) -> str:
    """A string literal for an MLflow filter."""
    return "'" + value.replace("'", "\\'") + "'"


def tag_filter(key: str, value: str) -> str:
    """The MLflow filter `tags.`key` = 'value'`."""
    return f"tags.`{key}` = {literal(value)}"


class Attr:
    """User attributes of Optuna trials."""

    TUNE_TRIAL_ID: Final = Tag.TUNE_TRIAL_ID  # the Tune trial it was drawn for
    MLFLOW_RUN_ID: Final = "mlflow_run_id"  # the MLflow run of its Tune trial


# Keys of a trial's Tune config and results.
STRATEGY_KEY: Final = "strategy"  # a reserved name: no strategy param can take it
FINAL_KEY: Final = "bitsweep_final"
CONFIRMS_KEY: Final = "bitsweep_confirms"  # a confirmation trial: the Tune trial it confirms


class Phase:
    """The phase of a sweep's trial (its run's `Tag.PHASE`)."""

    SEARCH: Final = "search"  # drawn by Optuna, selected on validation
    CONFIRM: Final = "confirm"  # a selected config trained again with a fresh seed


# Files a trial and a sweep write.
RESULT_FILE: Final = "result.json"
WEIGHTS_FILE: Final = "weights.safetensors"
CHECKPOINT_FILE: Final = "trial.pt"

# Every metric a finished trial reports (`TrialResult.metrics()`): the columns of its MLflow run
# and what a sweep may optimize.
TRIAL_METRICS: Final = (
    "test_accuracy",
    "best_val_accuracy",
    "best_val_loss",
    "test_loss",
    "unique_weights",
    "unique_nonzero_weights",
    "weight_entropy_bits",
    "weight_entropy_nonzero_bits",
    "sparsity",
    "weight_bits",
    "weight_bytes",
    "compression_ratio",
    "mean_bits",
    "train_seconds",
    "samples_per_second",
)
# Metrics measured on the test split: reported, never read by anything that chooses (a search
# objective, early stopping, a selected config, a Pareto front). Each with the validation metric
# that selection uses in its place.
TEST_METRICS: Final = {"test_accuracy": "best_val_accuracy", "test_loss": "best_val_loss"}
# What a sweep may optimize: every trial metric but the test split's.
OBJECTIVE_METRICS: Final = tuple(m for m in TRIAL_METRICS if m not in TEST_METRICS)
# Metrics that measure the machine, not the method: never reproducible bit for bit.
TIMING_METRICS: Final = frozenset({"train_seconds", "samples_per_second"})
# Per-epoch keys a trial reports to Tune and that are logged as step metrics.
EPOCH_METRICS: Final = (
    "train_loss",
    "train_accuracy",
    "val_accuracy",
    "val_loss",
    "epoch_lr",
    "epoch_seconds",
)
# The leaderboard's metric columns, in the order tables show them.
LEADERBOARD_COLUMNS: Final = (
    "test_accuracy",
    "weight_bytes",
    "weight_bits",
    "compression_ratio",
    "unique_weights",
    "unique_nonzero_weights",
    "weight_entropy_bits",
    "sparsity",
    "train_seconds",
)

# Environment variables bitsweep reads.
HOME_ENV: Final = "BITSWEEP_HOME"
TOKEN_ENV: Final = "BITSWEEP_TOKEN"
CLUSTER_LOST_ENV: Final = "BITSWEEP_CLUSTER_LOST_SECONDS"
STORE_RETRY_ENV: Final = "BITSWEEP_STORE_RETRY_SECONDS"

EXPERIMENT_PREFIX: Final = "bitsweep/"
