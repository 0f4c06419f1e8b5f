"""What MLflow runs to load a trial's logged model ("models from code": no pickled object is
stored, and this script is copied beside the weights): the model is `DeployedModel`."""

import mlflow.models

from runners.sweep.logged_model import DeployedModel

mlflow.models.set_model(DeployedModel())
