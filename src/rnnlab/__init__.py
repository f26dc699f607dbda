"""rnnlab: train, compare, inspect, export and serve recurrent sequence classifiers.

    import rnnlab
    run = rnnlab.train(rnnlab.get_preset("dlw-lstm-a").config)
    model = rnnlab.load(run.dir)
    model.predict(images)            # images (N, 28, 28), MNIST form
"""

from rnnlab.config import DataConfig, ModelConfig, RunConfig, TrainConfig, apply_overrides
from rnnlab.errors import RnnlabError
from rnnlab.models import create_model, list_models
from rnnlab.presets import get_preset, list_presets
from rnnlab.run import Run, TrainedModel, load, read_run, resume, train

__version__ = "0.1.0"

__all__ = [
    "DataConfig",
    "ModelConfig",
    "Run",
    "RnnlabError",
    "RunConfig",
    "TrainConfig",
    "TrainedModel",
    "apply_overrides",
    "create_model",
    "get_preset",
    "list_models",
    "list_presets",
    "load",
    "read_run",
    "resume",
    "train",
]
