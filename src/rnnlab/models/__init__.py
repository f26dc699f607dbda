"""Models: the registry and the shared recurrent classifier."""

from rnnlab.models.recurrent import (
    SequenceClassifier,
    describe_parameters,
    flops_per_sample,
    parameter_count,
)
from rnnlab.models.own import import_models
from rnnlab.models.registry import (
    create_model,
    list_models,
    model_summaries,
    register_model,
    unregister_model,
)

__all__ = [
    "SequenceClassifier",
    "create_model",
    "describe_parameters",
    "flops_per_sample",
    "import_models",
    "list_models",
    "model_summaries",
    "parameter_count",
    "register_model",
    "unregister_model",
]
