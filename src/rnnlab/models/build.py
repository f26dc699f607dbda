"""A run's model, built from its config and its data: the readout check that needs the data, and the
input standardisation measured on the training split (kept in the model as buffers, so that an
exported or served model takes raw input)."""

from __future__ import annotations

import torch

from rnnlab.config import RunConfig
from rnnlab.data.splits import Datasets
from rnnlab.errors import ConfigError
from rnnlab.models.recurrent import GATES, SequenceClassifier
from rnnlab.models.registry import create_model


def check_readout(cfg: RunConfig, varying_lengths: bool) -> None:
    """Refuse the ``all`` readout for sequences of varying length (it reads every padded step)."""
    if varying_lengths and cfg.model.readout == "all":
        raise ConfigError("model.readout=all reads every step, so it needs sequences of one length; "
                          f"{cfg.data.file} has lengths_train: use model.readout=last or mean")
    if varying_lengths and cfg.model.bidirectional and cfg.model.cell not in GATES:
        # rnnlab packs the batch so that its own layers' reverse direction starts at each sequence's
        # end; a module of one's own takes a plain (B, T, F) batch, whose padding it would read first.
        raise ConfigError(f"model.cell={cfg.model.cell} is a model of your own, and its reverse direction would "
                          f"read the padding of {cfg.data.file} (it has lengths_train) before each sequence: "
                          "use it with model.bidirectional=false, or with sequences of one length")


def build_model(cfg: RunConfig, datasets: Datasets) -> SequenceClassifier:
    check_readout(cfg, datasets.train.lengths is not None)
    mean: float | torch.Tensor = 0.0
    std: float | torch.Tensor = 1.0
    if cfg.data.standardize and cfg.data.dataset == "file":  # a user's features: each on its own scale
        mean, std = datasets.train.feature_stats()  # (F,), (F,)
        std = torch.where(std > 0, std, torch.ones_like(std))  # a constant feature: nothing to scale
    elif cfg.data.standardize:  # images: one mean and std over all pixels
        mean, std = datasets.train.pixel_stats()
        std = std if std > 0 else 1.0
    _, steps, features = datasets.train.x.shape
    return create_model(cfg.model, input_size=features, seq_len=steps, num_classes=datasets.num_classes,
                        input_mean=mean, input_std=std)
