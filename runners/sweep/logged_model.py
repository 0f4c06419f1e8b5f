"""Each trial's deployed weights as an MLflow logged model (a pyfunc), so that MLflow's Models
view lists it and `mlflow.pyfunc.load_model("models:/<model id>")` loads it.

The model is the packed file (`weights.safetensors`) and a small Python model that rebuilds
the float network from it through `runners.engine.export.load_deployed`; its signature is the
network's: float32 inputs of the dataset's shape, `(N, C, H, W)` or `(N, F)`, with the values
as the dataset's files hold them (for example pixel values 0-255), and one float32 logit a
class out. The model standardizes its inputs with the training split's statistics (per channel
or per feature), which the packed file keeps; a file written without them (before bitsweep
kept them) takes inputs standardized already.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import warnings
from collections.abc import Iterator
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import TYPE_CHECKING, Any

import mlflow.pyfunc
import numpy as np
from mlflow.entities import LoggedModelOutput, LoggedModelStatus
from mlflow.environment_variables import MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR
from mlflow.models import ModelSignature
from mlflow.pyfunc import PythonModel
from mlflow.types.schema import Schema, TensorSpec

from runners.engine.export import packed_model_spec

if TYPE_CHECKING:
    from mlflow.tracking import MlflowClient

WEIGHTS_ARTIFACT = "weights"
SCRIPT = Path(__file__).with_name("pyfunc_script.py")
MODEL_TYPE = "bitsweep-deployed"


class DeployedModel(PythonModel):  # type: ignore[misc]
    """The float network a packed export stands for, as a pyfunc: `predict` takes a float32
    array (N, *input_shape) of raw inputs, standardizes it as the trial's training split was,
    and returns the logits (N, classes).

    MLflow warns as this class is made that `predict` has no type hints (under a filter of its
    own, which no caller's filter overrides): a sweep imports this module while its
    third-party warnings go to its log (`runners.sweep.quiet`), not at start."""

    def load_context(self, context: Any) -> None:
        import torch

        from runners.engine.export import load_deployed

        path = Path(context.artifacts[WEIGHTS_ARTIFACT])
        self.model = load_deployed(path)
        scaling = packed_model_spec(path).standardization
        self.scaling = None
        if scaling is not None:
            shape = scaling["shape"]
            mean = torch.tensor(scaling["mean"], dtype=torch.float32).reshape(shape)
            std = torch.tensor(scaling["std"], dtype=torch.float32).reshape(shape)
            self.scaling = (mean, std)

    # No type hints: MLflow would read a schema off them; the signature is logged instead.
    def predict(self, context, model_input, params=None):  # type: ignore[no-untyped-def]
        import torch

        # A copy: standardizing works in place, on the training split's float32 arithmetic.
        x = torch.tensor(np.asarray(model_input, dtype=np.float32))
        if self.scaling is not None:
            x.sub_(self.scaling[0]).div_(self.scaling[1])
        with torch.no_grad():
            return self.model(x).numpy()


@contextlib.contextmanager
def _no_progress_bars() -> Iterator[None]:
    """MLflow draws a progress bar on the terminal as it copies the weights into the model;
    a sweep's terminal shows bitsweep's own lines."""
    key = MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR.name
    before = os.environ.get(key)
    os.environ[key] = "false"
    try:
        yield
    finally:
        if before is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = before


def _requirement() -> str:
    try:
        return f"bitsweep=={version('bitsweep')}"
    except PackageNotFoundError:  # run from a checkout that is not installed
        return "bitsweep"


def log_deployed_model(
    client: MlflowClient,
    experiment_id: str,
    run_id: str,
    weights: Path,
    *,
    name: str,
    tags: dict[str, str] | None = None,
) -> str:
    """Log `weights` (a packed export) as a logged model of `run_id`; returns its model id.
    The requirements are given, not inferred: inference imports and times the model, seconds
    a trial."""
    spec = packed_model_spec(weights)
    signature = ModelSignature(
        inputs=Schema([TensorSpec(np.dtype(np.float32), (-1, *spec.input_shape))]),
        outputs=Schema([TensorSpec(np.dtype(np.float32), (-1, spec.num_classes))]),
    )
    model = client.create_logged_model(
        experiment_id, name=name, source_run_id=run_id, tags=tags, model_type=MODEL_TYPE
    )
    try:
        with tempfile.TemporaryDirectory() as tmp, _no_progress_bars(), warnings.catch_warnings():
            folder = Path(tmp) / "model"
            # MLflow advises an input example, which it would run the model on to check: a
            # load and a forward pass a trial. The signature says what the model takes.
            warnings.filterwarnings("ignore", message=".*input example was not provided")
            mlflow.pyfunc.save_model(
                path=str(folder),
                python_model=str(SCRIPT),
                artifacts={WEIGHTS_ARTIFACT: str(weights)},
                signature=signature,
                pip_requirements=[_requirement()],
            )
            client.log_model_artifacts(model.model_id, str(folder))
    except Exception:
        client.finalize_logged_model(model.model_id, LoggedModelStatus.FAILED)
        raise
    client.finalize_logged_model(model.model_id, LoggedModelStatus.READY)
    client.log_outputs(run_id, [LoggedModelOutput(model.model_id, step=0)])
    return str(model.model_id)


__all__ = ["DeployedModel", "log_deployed_model"]
