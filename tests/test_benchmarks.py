"""The benchmark scripts' own logic: their baselines compute what they claim, and the targets
table reads the right figures. (The timings themselves are not tested: they live in the
benchmarks because these machines are noisy.)"""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest
import torch

ROOT = Path(__file__).resolve().parents[1]


def _load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"bench_{name}", ROOT / "benchmarks" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up while the class is built
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def train_speed() -> ModuleType:
    return _load("train_speed")


def test_the_tutorial_dataset_gives_what_totensor_gives_and_rnnlab_trains_on(train_speed: ModuleType) -> None:
    images = torch.randint(0, 256, (3, 28, 28), dtype=torch.uint8)
    data = train_speed.ToTensorDataset(images, torch.tensor([4, 1, 9]))
    x, label = data[2]
    assert x.shape == (1, 28, 28) and x.dtype == torch.float32 and label == 9
    torch.testing.assert_close(x[0], images[2].float() / 255, rtol=0, atol=0)


def test_every_case_is_a_valid_config_with_a_timed_window(train_speed: ModuleType) -> None:
    for quick in (False, True):
        for case in train_speed.cases(quick):
            cfg = train_speed.config_for(case)
            assert case.iterations > 0 and cfg.train.amp == "off"  # the float32 columns are float32
            assert cfg.train.eval_every > case.iterations * 10  # no evaluation inside the timed window


def _row(name: str, tutorial: float, plain: float, rnnlab: float, efficiency: float) -> tuple:
    # the layout main() builds: name, impl, tutorial, plain, rnnlab, ratio text, tuned text,
    # rnnlab / tutorial, plain efficiency, rnnlab efficiency, step GEMM share, ceiling, then the GEMM
    # floor's efficiency and samples/s (here: twice rnnlab's rate, so twice its efficiency)
    return (name, "FastRecurrent", tutorial, plain, rnnlab, "-", "-", rnnlab / tutorial, 0.2, efficiency, 0.6, 0.8,
            2 * efficiency, 2 * rnnlab)


def test_the_targets_table_reads_each_models_own_figures(train_speed: ModuleType) -> None:
    rows = [_row("dlw-rnn-a (RNN relu 1x100)", 1000, 2000, 5000, 0.55),
            _row("dlw-lstm-b (LSTM 2x100)", 1000, 2000, 2900, 0.45),
            _row("GRU 1x128", 1000, 2000, 1900, 0.3)]
    lines = train_speed.target_lines(rows)
    table = {line.split(" | ")[0].lstrip("| "): line for line in lines[2:]}
    assert table["dlw-rnn-a: rnnlab / plain >= 2.00x"].endswith("| 2.50x | yes | 5.00x |")
    assert table["dlw-rnn-a: rnnlab / tutorial >= 5.00x"].endswith("| 5.00x | yes | 10.00x |")
    assert table["dlw-rnn-a: rnnlab FLOP efficiency >= 50%"].endswith("| 55% | yes | 110% |")
    assert table["dlw-lstm-b: rnnlab / plain >= 1.50x"].endswith("| 1.45x | no | 2.90x |")
    assert table["dlw-lstm-b: rnnlab FLOP efficiency >= 50%"].endswith("| 45% | no | 90% |")
    assert table["no model slower than plain (median)"].endswith("| 0.95x (GRU 1x128) | no | |")


def test_the_gemm_floor_lists_every_gemm_of_a_step_and_counts_its_flops() -> None:
    """gemm_floor.Shape: the GEMMs of a training step, in their shapes, and the benchmark's FLOP count
    (3x forward) for the same model, equal to rnnlab's own analytic count."""
    from rnnlab.config import ModelConfig
    from rnnlab.models import create_model, flops_per_sample

    floor = _load("gemm_floor")
    shape = floor.Shape("rnn", 100, 1, 100, 28, 28)
    ops = shape.gemms()
    assert ((100, 100), (100, 100), 28) in ops and ((100, 100), (100, 100), 27) in ops  # both recurrences
    assert ((2800, 28), (28, 100), 1) in ops and ((100, 2800), (2800, 28), 1) in ops  # projection, dW_ih
    assert not any(m == 2800 and n == 28 for (m, _), (_, n), _ in ops)  # no gradient for the input itself
    assert len(floor.Shape("lstm", 8, 2, 4, 5, 3).gemms()) == 5 + 6 + 3  # the second layer's dX too
    for cell, layers, directions, readout in (("lstm", 2, 1, "last"), ("gru", 1, 2, "all"), ("rnn", 2, 1, "all")):
        model = create_model(ModelConfig(cell=cell, hidden=8, layers=layers, bidirectional=directions == 2,
                                         readout=readout), input_size=3, seq_len=5, num_classes=4)
        shape = floor.Shape(cell, 8, layers, 1, 5, 3, 4, directions, model.head.in_features)
        assert shape.train_flops() == 3 * flops_per_sample(model, 5)
    assert floor.floor_seconds(floor.Shape("rnn", 4, 1, 2, 3, 2), repeats=2) > 0
