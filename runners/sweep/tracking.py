"""MLflow as the leaderboard: experiments, the sweep's parent run, one child run per trial.

Only the Ray driver writes, through `TrialLogger` (a Tune callback), so a SQLite store has one
writer. Ray's own `MLflowLoggerCallback` opens a second run for a trial resumed by
`Tuner.restore` and has no parent runs; this logger finds a trial's run by its tags instead,
continues it, and never logs a finished trial twice.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import time
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow.data.schema import TensorDatasetSchema
from mlflow.entities import Dataset, DatasetInput, InputTag, Metric, Param, Run, RunTag
from mlflow.tracking import MlflowClient
from mlflow.types.schema import Schema, TensorSpec
from ray import tune

from runners.sweep.worker import FINAL_KEY, RESULT_FILE, WEIGHTS_FILE, confirms, split_config
from schemas.errors import FieldError
from schemas.names import (
    BOARD_VIEW_KEY,
    DEPLOYED_FILE_METRIC,
    EPOCH_METRICS,
    EXPERIMENT_KIND_TAG,
    NOTE_TAG,
    SEED_METRIC,
    SHARED_VIEW_TAG_PREFIX,
    STEP_CURVE_METRIC,
    TRAINING_KIND,
    Attr,
    Phase,
    Tag,
    tag_filter,
)
from schemas.trial import TrialConfig, TrialResult

log = logging.getLogger(__name__)

VERSION_TAG = Tag.VERSION
TUNE_TRIAL_ATTR = Attr.TUNE_TRIAL_ID
RUN_ID_ATTR = Attr.MLFLOW_RUN_ID


def bitsweep_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("bitsweep")
    except PackageNotFoundError:
        return "unknown"


def ensure_experiment(client: MlflowClient, name: str, artifact_root: str | None) -> str:
    """The id of experiment `name`, created (with artifacts under `artifact_root`) if needed."""
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return str(exp.experiment_id)
    location = None
    if artifact_root is not None:
        safe = name.replace("/", "_").replace(":", "_")
        location = f"{artifact_root.rstrip('/')}/{safe}"
    return str(client.create_experiment(name, artifact_location=location))


# The board as a view of MLflow's run table (`SHARED_VIEW_TAG_PREFIX`): the runs measured on
# fresh seeds, grouped by strategy with their means, the board's columns. The keys are those of
# the view state MLflow 3.17's UI saves (search facets and table state); a group-by written as
# "tag.<aggregate>.<tag key>".
BOARD_VIEW: dict[str, Any] = {
    "searchFilter": f"tags.`{Tag.PHASE}` = '{Phase.CONFIRM}'",
    "orderByKey": "attributes.start_time",
    "orderByAsc": False,
    "groupBy": f"tag.average.{Tag.STRATEGY}",
    "selectedColumns": [
        f"metrics.`{m}`"
        for m in (
            "test_accuracy",
            "weight_bytes",
            "mean_bits",
            "weight_entropy_bits",
            "unique_weights",
            "sparsity",
            "best_val_accuracy",
        )
    ],
}


# The runs page's query that opens `BOARD_VIEW`, in MLflow's "Model training" workspace (a
# browser MLflow has not seen opens its GenAI one, whatever the experiment).
BOARD_VIEW_QUERY = f"?viewStateShareKey={BOARD_VIEW_KEY}&workflowType=machine_learning"


def board_view_url(experiment_id: str, ui: str = "http://127.0.0.1:5000") -> str:
    """Where MLflow's UI at `ui` shows `BOARD_VIEW` of an experiment."""
    return f"{ui}/#/experiments/{experiment_id}/runs{BOARD_VIEW_QUERY}"


def describe_experiment(
    client: MlflowClient, experiment_id: str, *, dataset: str, model: str
) -> None:
    """Give a benchmark's experiment its description (MLflow's `mlflow.note.content`) and its
    kind: a model-training experiment, so that the MLflow UI opens it on its runs (without the
    tag MLflow 3 guesses, and shows an empty GenAI overview)."""
    exp = client.get_experiment(experiment_id)
    if exp.tags.get(EXPERIMENT_KIND_TAG) != TRAINING_KIND:
        client.set_experiment_tag(experiment_id, EXPERIMENT_KIND_TAG, TRAINING_KIND)
    view, view_tag = json.dumps(BOARD_VIEW, sort_keys=True), SHARED_VIEW_TAG_PREFIX + BOARD_VIEW_KEY
    if exp.tags.get(view_tag) != view:
        client.set_experiment_tag(experiment_id, view_tag, view)
    if exp.tags.get(NOTE_TAG):
        return
    text = (
        f"bitsweep benchmark: dataset `{dataset}`, model `{model}`. Each sweep is a parent run "
        "(`bitsweep.kind = sweep`) holding leaderboard.md, trials.csv and pareto.png; each trial "
        "is a child run (`bitsweep.kind = trial`) with the strategy's params, per-epoch metrics, "
        "and the accuracy of its deployed weights (`test_accuracy`) beside what they cost "
        "(`weight_bytes`, `weight_entropy_bits`, `unique_weights`, `sparsity`). Search trials "
        "(`bitsweep.phase = search`) are selected on validation (`best_val_accuracy`); each "
        "strategy's selected config is trained again on fresh seeds (`bitsweep.phase = "
        "confirm`), and a sweep's leaderboard.md reports their mean test accuracy with its 95% "
        "interval. Sort runs by test_accuracy here and you select on the test split: read "
        "leaderboard.md or `bitsweep leaderboard` instead. MLflow's view of the board: the "
        f"runs page with `{BOARD_VIEW_QUERY}` "
        "groups the confirmation runs "
        "by strategy with their means (every sweep's together: add "
        "`and tags.`bitsweep.sweep_id` = '...'` to the filter for one)."
    )
    client.set_experiment_tag(experiment_id, NOTE_TAG, text)
    client.set_experiment_tag(experiment_id, Tag.DATASET, dataset)
    client.set_experiment_tag(experiment_id, Tag.MODEL, model)


def _tensor_schema(input_shape: list[int]) -> TensorDatasetSchema:
    """The data as MLflow's dataset panel renders it: float32 images or feature vectors of
    `input_shape` (any count), and int64 class labels."""
    return TensorDatasetSchema(
        features=Schema([TensorSpec(np.dtype("float32"), (-1, *input_shape), "x")]),
        targets=Schema([TensorSpec(np.dtype("int64"), (-1,), "y")]),
    )


def dataset_input(ref: str, summary: dict[str, Any], digest: str) -> DatasetInput:
    """MLflow's record of the dataset a run used: its reference, digest and split sizes."""
    profile = {k: summary[k] for k in ("train_size", "val_size", "test_size", "num_classes")}
    return DatasetInput(
        dataset=Dataset(
            name=ref,
            digest=digest,
            source_type="bitsweep",
            source=json.dumps({"dataset": ref}),
            schema=json.dumps(_tensor_schema(summary["input_shape"]).to_dict()),
            profile=json.dumps(profile),
        ),
        tags=[InputTag("mlflow.data.context", "train/val/test")],
    )


def finite(value: Any) -> bool:
    """Whether `value` is a finite number (not a bool): what MLflow is given as a metric."""
    return (
        isinstance(value, (int, float))
        and not isinstance(value, bool)
        and math.isfinite(float(value))
    )


def find_run(client: MlflowClient, experiment_id: str, tags: dict[str, str]) -> Run | None:
    """The run carrying every tag in `tags`, or None."""
    flt = " and ".join(tag_filter(k, v) for k, v in tags.items())
    runs = client.search_runs([experiment_id], filter_string=flt, max_results=2)
    if len(runs) > 1:
        log.warning("several runs carry %s; continuing the first", tags)
    return runs[0] if runs else None


class TrialLogger(tune.Callback):
    """Logs every Tune trial of one strategy as a child run of the sweep's parent run."""

    def __init__(
        self,
        *,
        client: MlflowClient,
        experiment_id: str,
        parent_run_id: str,
        sweep_id: str,
        strategy: str,
        tags: dict[str, str],
        base: TrialConfig,
        export_weights: bool,
        optuna_url: str | None = None,
        study_name: str | None = None,
        inputs: list[DatasetInput] | None = None,
    ) -> None:
        self.client = client
        self.experiment_id = experiment_id
        self.parent_run_id = parent_run_id
        self.sweep_id = sweep_id
        self.strategy = strategy
        self.tags = tags
        self.base = base
        self.optuna_url = optuna_url
        self.study_name = study_name
        self._optuna: Any = None
        self.inputs = list(inputs or [])
        if export_weights:
            # MLflow's model code takes a while to import (0.5 s on an idle machine): once, as
            # the sweep starts, not as the first trial ends while the driver follows the rest.
            import runners.sweep.logged_model  # noqa: F401
        self.export_weights = export_weights
        self._runs: dict[str, str] = {}
        self._done: set[str] = set()
        self._seconds: dict[str, float] = {}  # trial id -> training seconds of its epochs
        self.errors: dict[str, str] = {}  # trial id -> the error line logged for it

    # -- runs ---------------------------------------------------------------------------------

    def _run_for(self, trial: Any) -> str:
        """The run id of `trial`: found by its tags (a resumed trial), else created."""
        tid = trial.trial_id
        if tid in self._runs:
            return self._runs[tid]
        key = {Tag.SWEEP_ID: self.sweep_id, Tag.TRIAL_ID: tid}
        run = find_run(self.client, self.experiment_id, key)
        if run is not None:
            run_id = run.info.run_id
            if run.info.status == "FINISHED":
                self._done.add(tid)
            elif run.info.status != "RUNNING":
                self.client.update_run(run_id, status="RUNNING")
        else:
            params = run_params(self.base, trial.config)
            number = len(self._runs) + 1
            phase = {Tag.PHASE: Phase.SEARCH}
            confirmed = confirms(trial.config)
            if confirmed is not None:
                phase = {Tag.PHASE: Phase.CONFIRM, Tag.CONFIRMS_TRIAL: confirmed}
                found = self._runs.get(confirmed) or self._find(confirmed)
                if found is not None:
                    phase[Tag.CONFIRMS] = found
            name = f"{self.strategy}-{tid}" + ("-confirm" if confirmed is not None else "")
            run_id = self.client.create_run(
                self.experiment_id,
                run_name=name,
                tags={
                    Tag.PARENT_RUN: self.parent_run_id,
                    Tag.KIND: "trial",
                    Tag.TRIAL_ID: tid,
                    Tag.TRIAL_NUMBER: str(number),
                    Tag.STRATEGY: self.strategy,
                    **phase,
                    **self.tags,
                },
            ).info.run_id
            self.client.log_batch(  # MLflow chunks it within its limits
                run_id,
                params=[Param(k, _param_str(v)) for k, v in sorted(params.items())],
            )
            if self.inputs:
                self.client.log_inputs(run_id, datasets=self.inputs)
            self._link_optuna(tid, run_id)
        self._runs[tid] = run_id
        return run_id

    def _find(self, tid: str) -> str | None:
        run = find_run(
            self.client, self.experiment_id, {Tag.SWEEP_ID: self.sweep_id, Tag.TRIAL_ID: tid}
        )
        return None if run is None else run.info.run_id

    def _link_optuna(self, tid: str, run_id: str) -> None:
        """Tag the run with its Optuna study and trial number, and give that trial the run's id,
        so that the Optuna dashboard and MLflow lead to each other."""
        if not self.optuna_url or not self.study_name:
            return

        if self._optuna is None:
            from runners.sweep.retry import RetryingRDBStorage

            self._optuna = RetryingRDBStorage(self.optuna_url)
        storage = self._optuna
        try:
            study_id = storage.get_study_id_from_name(self.study_name)
        except KeyError:
            return
        for t in storage.get_all_trials(study_id, deepcopy=False):
            if t.user_attrs.get(TUNE_TRIAL_ATTR) == tid:
                trial_id = storage.get_trial_id_from_study_id_trial_number(study_id, t.number)
                with contextlib.suppress(RuntimeError):  # a finished trial: attrs are frozen
                    storage.set_trial_user_attr(trial_id, RUN_ID_ATTR, run_id)
                self.client.log_batch(
                    run_id,
                    tags=[
                        RunTag(Tag.OPTUNA_STUDY, self.study_name),
                        RunTag(Tag.OPTUNA_TRIAL, str(t.number)),
                    ],
                )
                return

    # -- Tune hooks ----------------------------------------------------------------------------

    def on_trial_start(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        self._run_for(trial)

    def on_trial_result(
        self, iteration: int, trials: list[Any], trial: Any, result: dict[str, Any], **info: Any
    ) -> None:
        run_id = self._run_for(trial)
        if trial.trial_id in self._done or result.get(FINAL_KEY):
            return
        step = int(result.get("epoch", result.get("training_iteration", 0)))
        ts = int(result.get("timestamp", 0) * 1000)
        metrics = [
            Metric(k, float(result[k]), ts, step)
            for k in EPOCH_METRICS
            if k in result and finite(result[k])
        ]
        metrics += [
            Metric(k, float(v), ts, step)
            for k, v in result.items()
            if k.startswith(("strategy.", "layer.")) and finite(v)
        ]
        node = result.get("node")
        tags = [RunTag(Tag.NODE, str(node))] if node else []
        if finite(result.get("epoch_seconds")):
            tid = trial.trial_id
            self._seconds[tid] = self._seconds.get(tid, 0.0) + float(result["epoch_seconds"])
        self.client.log_batch(run_id, metrics=metrics, tags=tags)

    def on_trial_complete(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        run_id = self._run_for(trial)
        tid = trial.trial_id
        if tid in self._done:
            return
        ckpt = trial.checkpoint
        # The checkpoint may live on shared or cloud storage: read it through a local copy.
        with contextlib.ExitStack() as stack:
            final = Path(stack.enter_context(ckpt.as_directory())) if ckpt is not None else None
            if final is None or not (final / RESULT_FILE).exists():
                # Stopped early by the scheduler: its epochs are logged, no test metrics; what
                # it spent counts in its strategy's search budget.
                last = trial.last_result or {}
                spent = [Metric("train_seconds", self._seconds.get(tid, 0.0), _now(), 0)]
                if finite(last.get("epoch")):
                    spent.append(Metric("epochs_run", float(last["epoch"]), _now(), 0))
                self.client.log_batch(run_id, metrics=spent)
                self.client.set_tag(run_id, Tag.STOPPED_EARLY, "true")
                self.client.set_terminated(run_id, status="KILLED")
                self._done.add(tid)
                return
            result = TrialResult.model_validate_json((final / RESULT_FILE).read_text())
            self._log_result(run_id, result, final, tid)
        self.client.set_terminated(run_id, status="FINISHED")
        self._done.add(tid)

    def on_trial_recover(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        run_id = self._run_for(trial)
        self.client.set_tag(run_id, Tag.RETRIED, str(trial.num_failures))

    def on_trial_error(self, iteration: int, trials: list[Any], trial: Any, **info: Any) -> None:
        run_id = self._run_for(trial)
        field, line = trial_error(trial)
        self.errors[trial.trial_id] = line
        tags = [RunTag(Tag.ERROR, line)]
        if field is not None:
            tags.append(RunTag(Tag.ERROR_FIELD, field))
        self.client.log_batch(run_id, tags=tags)
        self.client.set_terminated(run_id, status="FAILED")
        self._done.add(trial.trial_id)

    # -- final results -------------------------------------------------------------------------

    def _log_result(self, run_id: str, result: TrialResult, folder: Path, tid: str) -> None:
        now = int(time.time() * 1000)
        metrics = result.metrics()
        entries = [Metric(k, float(v), now, 0) for k, v in metrics.items() if finite(v)]
        # Params stay params (MLflow charts a numeric metric as a one-bar chart among the
        # board's): the seed alone is a metric too, read by the board with the run's numbers.
        entries.append(Metric(SEED_METRIC, float(result.config.seed), now, 0))
        entries.append(Metric("epochs_run", float(result.epochs_run), now, 0))
        entries.append(Metric("best_epoch", float(result.best_epoch), now, 0))
        entries += [  # a curve at the optimizer step, when the trial measured one
            Metric(STEP_CURVE_METRIC, v.val_accuracy, now, v.step)
            for v in result.val_steps
            if finite(v.val_accuracy)
        ]
        deployed = folder / WEIGHTS_FILE
        if self.export_weights and deployed.exists():
            size = deployed.stat().st_size  # the packed file: codes, floats, BatchNorm, header
            entries.append(Metric(DEPLOYED_FILE_METRIC, float(size), now, 0))
        env = result.environment
        tags = [
            RunTag(NOTE_TAG, run_description(result)),
            RunTag(Tag.DEVICE, env.device),
            RunTag(Tag.GIT_COMMIT, env.git_commit or ""),
            RunTag(Tag.TORCH, env.torch),
            RunTag(Tag.THREADS, str(env.threads or "")),
        ]
        self.client.log_batch(run_id, metrics=entries, tags=tags)
        self.client.log_artifact(run_id, str(folder / RESULT_FILE))
        if self.export_weights and (folder / WEIGHTS_FILE).exists():
            self.client.log_artifact(run_id, str(folder / WEIGHTS_FILE))
            # The same file as a logged model: MLflow's Models view, and loading by model id.
            from runners.sweep.logged_model import log_deployed_model

            log_deployed_model(
                self.client,
                self.experiment_id,
                run_id,
                folder / WEIGHTS_FILE,
                name=f"{self.strategy}-{tid}",
                tags={Tag.STRATEGY: self.strategy, Tag.TRIAL_ID: tid, Tag.SWEEP_ID: self.sweep_id},
            )


def run_description(result: TrialResult) -> str:
    """A trial run's description in MLflow's UI: what the leaderboard reads of it, first."""
    w = result.weights
    kb = w.weight_bytes / 1000
    return (
        f"**test accuracy {result.test_accuracy:.4f}** (validation {result.best_val_accuracy:.4f}"
        f", epoch {result.best_epoch}) · **weights {kb:,.1f} kB**, {w.mean_bits:.2f} bits a "
        f"weight, entropy {w.weight_entropy_bits:.2f} bits, {w.unique_weights:,} unique values, "
        f"{100 * w.sparsity:.1f} % zero.\n\nOne trial of a sweep; the sweep's board (the parent "
        "run's leaderboard.md) reports the selected configs' means over fresh seeds."
    )


def _now() -> int:
    return int(time.time() * 1000)


def run_params(base: TrialConfig, sampled: dict[str, Any]) -> dict[str, Any]:
    """The params of the run of a trial drawn as `sampled` from `base` (see `resolved_params`)."""
    from runners.engine.trial import resolve

    _, sampled = split_config(sampled)  # the strategy of a sweep's trial is the base's
    seed = sampled.pop("seed", base.seed)
    trial = resolve(base.model_copy(update={"seed": seed, "params": {**base.params, **sampled}}))
    return resolved_params(trial.config)


def resolved_params(c: TrialConfig) -> dict[str, Any]:
    """The params of a trial's run, one name each, from its resolved config: `strategy`, every
    param of the strategy, and the training settings `lr`, `optimizer`, `weight_decay`,
    `momentum`, `batch_size`, `epochs`, `seed` and `schedule` (docs/records.md)."""
    assert c.optimizer is not None and c.schedule is not None
    return {
        "strategy": c.strategy,
        **c.params,
        "lr": c.optimizer.lr,
        "optimizer": c.optimizer.name,
        "weight_decay": c.optimizer.weight_decay,
        "momentum": c.optimizer.momentum,
        "batch_size": c.batch_size,
        "epochs": c.epochs,
        "seed": c.seed,
        "schedule": c.schedule.name,
    }


def _param_str(v: Any) -> str:
    s = json.dumps(v) if not isinstance(v, str) else v
    return s[:6000]


def trial_error(trial: Any) -> tuple[str | None, str]:
    """(field, `field: reason`) of a trial that failed on a refused input, raised as a
    `FieldError` in its worker (it arrives pickled inside Ray's error); else (None, the last
    line of the trial's error)."""
    exc = _pickled_error(trial)
    for _ in range(10):  # Ray's RayTaskError holds the worker's exception as `cause`
        cause = getattr(exc, "cause", None)
        if isinstance(cause, FieldError):
            exc = cause
        if exc is None or isinstance(exc, FieldError):
            break
        exc = cause or exc.__cause__
    if isinstance(exc, FieldError):
        return exc.field, f"{exc.field}: {exc.reason}"[:5000]
    return None, _error_line(trial)


def _pickled_error(trial: Any) -> BaseException | None:
    """The exception Tune pickled for a failed trial, read from the driver's local copy (the
    storage copy, which `Trial.get_pickled_error` reads, is not written yet when callbacks run).
    """
    import cloudpickle

    path = getattr(trial, "pickled_error_file", None)
    try:
        if path and Path(path).exists():
            with open(path, "rb") as f:
                exc = cloudpickle.load(f)
        else:
            exc = trial.get_pickled_error()
    except Exception:  # an error that does not unpickle here: the text is all there is
        return None
    return exc if isinstance(exc, BaseException) else None


def _error_line(trial: Any) -> str:
    """The last line of the trial's error (the exception message)."""
    text = ""
    path = getattr(trial, "error_file", None) or ""
    if path and Path(path).exists():
        lines = [ln for ln in Path(path).read_text().splitlines() if ln.strip()]
        text = lines[-1] if lines else ""
    return text[:5000] or "trial failed"


def set_tracking(uri: str) -> MlflowClient:
    mlflow.set_tracking_uri(uri)
    return MlflowClient(tracking_uri=uri)
