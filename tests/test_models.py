"""The model registry: shapes over every option, parameter listings as the tutorials print them."""

from __future__ import annotations

import itertools
import warnings
from dataclasses import replace

import numpy as np
import pytest
import torch

from rnnlab.config import ModelConfig, TrainConfig
from rnnlab.errors import ConfigError
from rnnlab.models import create_model, describe_parameters, flops_per_sample, list_models, parameter_count
from rnnlab.models import registry, size
from rnnlab.models.registry import get_builder
from rnnlab.models.size import check_model_size, parameter_estimate


def build(**kw):
    return create_model(ModelConfig(**kw), input_size=28, seq_len=28, num_classes=10)


def test_registry_lists_models_and_rejects_unknown_names() -> None:
    assert list_models() == ["gru", "lstm", "rnn"]
    with pytest.raises(ConfigError, match="unknown model 'transformer'; valid models: gru, lstm, rnn"):
        get_builder("transformer")


@pytest.mark.parametrize(
    ("cell", "readout", "bidirectional", "layers", "impl"),
    list(itertools.product(["rnn", "lstm", "gru"], ["last", "mean", "all"], [False, True], [1, 2], ["auto", "torch"])),
)
def test_output_shapes(cell: str, readout: str, bidirectional: bool, layers: int, impl: str) -> None:
    model = create_model(ModelConfig(cell=cell, hidden=6, layers=layers, readout=readout,
                                     bidirectional=bidirectional, impl=impl),
                         input_size=5, seq_len=7, num_classes=3)
    x = torch.rand(4, 7, 5)  # (B, T, F)
    assert model(x).shape == (4, 3)
    steps = model.step_logits(x)
    assert steps.shape == (4, 7, 3)
    # Having read everything, the per-step prediction is the model's prediction.
    torch.testing.assert_close(steps[:, -1], model.eval()(x))
    # Chosen points, cheap path or one pass per point alike, are those steps of the full answer.
    torch.testing.assert_close(model.step_logits(x, [2, 7, 3]), steps[:, [1, 6, 2]])
    for bad in ([0], [-1], [8]):  # not a step count: refused, not wrapped around to another step
        with pytest.raises(ConfigError, match="points must be step counts from 1 to 7"):
            model.step_logits(x, bad)


def test_step_points_may_be_numpy_integers_and_nothing_but_step_counts() -> None:
    """``np.arange(2, 8, 2)`` is as good as a list (before: refused); True, 2.5, "abc" and a bare
    number are refused with the same message (before: a RuntimeError for True)."""
    model = create_model(ModelConfig(cell="gru", hidden=6), input_size=5, seq_len=7, num_classes=3)
    x = torch.rand(2, 7, 5)
    torch.testing.assert_close(model.step_logits(x, np.arange(2, 8, 2)), model.step_logits(x, [2, 4, 6]))
    torch.testing.assert_close(model.step_logits(x, range(1, 8)), model.step_logits(x))
    for bad in ([True], [2.5], "abc", 3, [np.float32(2)]):
        with pytest.raises(ConfigError, match="^points must be step counts from 1 to 7, got "):
            model.step_logits(x, bad)


def shapes(model) -> list[list[int]]:
    return [list(shape) for _, shape, _ in describe_parameters(model)]


def test_a_sequence_classifier_given_the_whole_run_config_says_to_pass_its_model() -> None:
    """A builder of one's own that passes the RunConfig (before: AttributeError: no attribute 'cell')."""
    from rnnlab.config import RunConfig
    from rnnlab.models import SequenceClassifier

    with pytest.raises(ConfigError, match=r"^SequenceClassifier: config must be a ModelConfig .* not a RunConfig; "
                                          r"pass its .model$"):
        SequenceClassifier(RunConfig(), input_size=28, seq_len=28, num_classes=10)
    with pytest.raises(ConfigError, match=r"not a dict$"):
        SequenceClassifier({"cell": "lstm"}, input_size=28, seq_len=28, num_classes=10)


def test_parameter_shapes_equal_the_tutorial_listings() -> None:
    # deep-learning-wizard RNN model A: 1 layer of 100 on 28 inputs, 10 classes.
    assert shapes(build(cell="rnn", nonlinearity="relu", hidden=100)) == [
        [100, 28], [100, 100], [100], [100], [10, 100], [10]]
    # RNN model B: a second layer reads the first layer's 100 outputs.
    assert shapes(build(cell="rnn", hidden=100, layers=2)) == [
        [100, 28], [100, 100], [100], [100], [100, 100], [100, 100], [100], [100], [10, 100], [10]]
    # LSTM model A: four gates stacked, so 400 rows.
    assert shapes(build(cell="lstm", hidden=100)) == [[400, 28], [400, 100], [400], [400], [10, 100], [10]]
    assert shapes(build(cell="gru", hidden=100))[:2] == [[300, 28], [300, 100]]
    assert parameter_count(build(cell="lstm", hidden=100)) == 4 * 100 * (28 + 100 + 2) + 1010


def test_readout_all_sees_every_step_and_bidirectional_doubles_features() -> None:
    assert shapes(build(cell="rnn", hidden=256, layers=2, readout="all"))[-2] == [10, 28 * 256]
    assert shapes(build(cell="gru", hidden=8, bidirectional=True))[-2] == [10, 16]


def test_flops_follow_the_formula() -> None:
    # RNN: 2H(I+H) per step; LSTM four times that; plus the head.
    assert flops_per_sample(build(cell="rnn", hidden=100)) == 2 * 100 * 128 * 28 + 2 * 100 * 10
    assert flops_per_sample(build(cell="lstm", hidden=100)) == 4 * 2 * 100 * 128 * 28 + 2 * 100 * 10


def test_flops_of_gru_stacked_and_bidirectional_models() -> None:
    """Counted by hand. The convention: 2 FLOPs per multiply-add of the weight matrices only
    (W_ih x_t and W_hh h_{t-1} for each gate, and the head's W x); biases, the gates' sigmoid
    and tanh, the elementwise products and a mean readout are not counted. Inputs 28 x 28
    (T = 28 steps of I = 28 features), 10 classes."""
    # GRU, H = 100: 3 gates (r, z, n), each W_ih (H x I) and W_hh (H x H) per step.
    gru = 28 * 3 * 2 * 100 * (28 + 100)  # = 2,150,400
    assert flops_per_sample(build(cell="gru", hidden=100)) == gru + 2 * 100 * 10
    # 2-layer tanh RNN, H = 64: layer 2 reads layer 1's 64 outputs instead of the 28 pixels.
    layer1, layer2 = 28 * 2 * 64 * (28 + 64), 28 * 2 * 64 * (64 + 64)
    assert flops_per_sample(build(cell="rnn", hidden=64, layers=2)) == layer1 + layer2 + 2 * 64 * 10
    # Bidirectional 2-layer LSTM, H = 32: each layer runs both directions over all 28 steps; layer 2
    # reads both directions' outputs (2H = 64 features); the head reads 2H features.
    layer1, layer2 = 2 * 28 * 4 * 2 * 32 * (28 + 32), 2 * 28 * 4 * 2 * 32 * (64 + 32)
    assert flops_per_sample(build(cell="lstm", hidden=32, layers=2, bidirectional=True)) == \
        layer1 + layer2 + 2 * 64 * 10
    # readout=all: the head reads every step's (bidirectional) state, T * 2H = 28 * 16 features.
    one_layer = 2 * 28 * 3 * 2 * 8 * (28 + 8)
    assert flops_per_sample(build(cell="gru", hidden=8, bidirectional=True, readout="all")) == \
        one_layer + 2 * (28 * 16) * 10
    # Another sequence length: the recurrence scales with the steps, the head does not.
    assert flops_per_sample(build(cell="gru", hidden=100), seq_len=14) == gru // 2 + 2 * 100 * 10


def test_init_schemes() -> None:
    irnn = build(cell="rnn", nonlinearity="relu", hidden=20, init="identity")
    torch.testing.assert_close(irnn.rnn.weight_hh_l0.detach(), torch.eye(20))
    assert float(irnn.rnn.bias_hh_l0.detach().abs().max()) == 0.0
    lstm = build(cell="lstm", hidden=20, init="orthogonal")
    w = lstm.rnn.weight_hh_l0.detach()[:20]  # the input gate's (H, H) block
    torch.testing.assert_close(w @ w.T, torch.eye(20), atol=1e-5, rtol=0)
    forget_bias = lstm.rnn.bias_ih_l0.detach()[20:40] + lstm.rnn.bias_hh_l0.detach()[20:40]
    assert torch.all(forget_bias == 1.0)


def test_standardisation_lives_inside_the_model() -> None:
    model = create_model(ModelConfig(cell="gru", hidden=4), input_size=3, seq_len=2, num_classes=2,
                         input_mean=0.5, input_std=0.25)
    state = model.state_dict()
    assert float(state["input_mean"]) == 0.5 and float(state["input_std"]) == 0.25


class _NoBf16Recurrence(torch.nn.Module):
    """Stands in for torch.nn.LSTM on a CPU whose oneDNN has no bf16 RNN primitive."""

    def __init__(self, inner: torch.nn.Module) -> None:
        super().__init__()
        self.inner = inner

    def forward(self, x: torch.Tensor):  # noqa: ANN201
        if torch.is_autocast_enabled("cpu"):
            raise RuntimeError("could not create a primitive descriptor for the LSTM forward "
                               "propagation primitive.")
        return self.inner(x)


@pytest.mark.parametrize("cell", ["rnn", "lstm", "gru"])
def test_bf16_autocast_on_cpu_trains(cell: str) -> None:
    """train.amp=bf16 on CPU works for every cell: natively, or (where the CPU cannot)
    with the recurrence in fp32 and a warning, never the raw oneDNN error."""
    torch.manual_seed(0)
    model = create_model(ModelConfig(cell=cell, hidden=16), input_size=28, seq_len=28, num_classes=10)
    x = torch.rand(4, 28, 28)
    with torch.autocast("cpu", dtype=torch.bfloat16), warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # this CPU may lack bf16 RNN kernels
        model(x).float().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())

    model.recurrent_in_fp32 = False
    model.rnn = _NoBf16Recurrence(model.rnn)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        with pytest.warns(RuntimeWarning, match="cannot run the .* recurrence under bf16"):
            logits = model(x)
        again = model(x)  # falls back straight away, no second warning
    assert logits.shape == again.shape == (4, 10) and torch.isfinite(logits.float()).all()
    assert model.recurrent_in_fp32


@pytest.mark.parametrize(
    ("cell", "readout", "bidirectional", "layers", "impl"),
    list(itertools.product(["rnn", "lstm", "gru"], ["last", "all"], [False, True], [1, 3], ["auto", "fast"])),
)
def test_parameter_estimate_counts_what_create_model_builds(cell: str, readout: str, bidirectional: bool,
                                                            layers: int, impl: str) -> None:
    config = ModelConfig(cell=cell, hidden=6, layers=layers, readout=readout, bidirectional=bidirectional, impl=impl)
    shape = dict(input_size=5, seq_len=7, num_classes=3)
    assert parameter_estimate(config, **shape) == parameter_count(create_model(config, **shape))


def test_a_model_too_big_for_memory_is_refused_before_allocating() -> None:
    # 50 layers of 100,000 LSTM units: 4.0e12 parameters, 14,752 GiB of weights (torch's raw error before).
    with pytest.raises(ConfigError, match=r"the model would have 4.0e12 parameters \(14,752 GiB of float32 "
                                          r"weights\); this machine has .* GiB of memory; lower model.hidden "
                                          r"or model.layers$"):
        build(hidden=100_000, layers=50)


def test_a_head_reading_every_step_that_does_not_fit_suggests_the_last_step(monkeypatch: pytest.MonkeyPatch) -> None:
    """readout=all on pixel MNIST: the head holds 784*H*10 of the parameters, far more than the recurrence."""
    config, shape = ModelConfig(cell="gru", hidden=512, readout="all"), dict(input_size=1, seq_len=784, num_classes=10)
    monkeypatch.setattr(size, "_memory_bytes", lambda: 2**20)
    with pytest.raises(ConfigError, match=r"; lower model.hidden or model.layers, or set model.readout=last \(the "
                                          r"head of readout=all reads all 784 steps: 4,014,080 of the parameters\)$"):
        size.check_model_size(config, **shape)
    with pytest.raises(ConfigError, match=r"; lower model.hidden or model.layers$"):  # the recurrence outweighs it
        size.check_model_size(replace(config, hidden=4096, readout="all"), input_size=1, seq_len=28, num_classes=10)


def test_model_size_limits_count_initialisation_and_training(monkeypatch: pytest.MonkeyPatch) -> None:
    config, shape = ModelConfig(cell="rnn", hidden=1000), dict(input_size=28, seq_len=28, num_classes=10)
    count = parameter_estimate(config, **shape)
    weights, building = 4 * count, 4 * count + 4 * 4 * 1000**2  # orthogonal_: about four H x H blocks more
    monkeypatch.setattr(size, "_memory_bytes", lambda: building)  # just enough: large but feasible
    assert check_model_size(config, **shape) == count
    monkeypatch.setattr(size, "_memory_bytes", lambda: building - 1)
    with pytest.raises(ConfigError, match=r"model.init=orthogonal needs .* while building it.*\(or set model.init"):
        check_model_size(config, **shape)
    assert check_model_size(replace(config, init="default"), **shape) == count
    # Training adds gradients and the optimizer's state: Adam's two moments; plain SGD none.
    monkeypatch.setattr(size, "_memory_bytes", lambda: 3 * weights)
    with pytest.raises(ConfigError, match="training with adam adds gradients and optimizer state: 4 copies"):
        check_model_size(replace(config, init="default"), **shape, train=TrainConfig())
    assert check_model_size(replace(config, init="default"), **shape, train=TrainConfig(optimizer="sgd")) == count


def test_model_size_on_a_gpu_counts_its_free_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    """Training on a GPU: the host builds the model, the GPU holds it with gradients and state."""
    config, shape = ModelConfig(cell="rnn", hidden=1000, init="default"), dict(input_size=28, seq_len=28,
                                                                               num_classes=10)
    weights = 4 * parameter_estimate(config, **shape)
    monkeypatch.setattr(size, "_memory_bytes", lambda: 2 * weights)  # the host could not train it with adam
    gpu = (4 * weights, "cuda:0 (Test GPU)")
    assert check_model_size(config, **shape, train=TrainConfig(), gpu=gpu) == weights // 4
    with pytest.raises(ConfigError, match=r"training with adam adds gradients and optimizer state: 4 copies, .*\); "
                                          r"the GPU cuda:0 \(Test GPU\) has .* of memory free; lower model.hidden"):
        check_model_size(config, **shape, train=TrainConfig(), gpu=(4 * weights - 1, "cuda:0 (Test GPU)"))
    monkeypatch.setattr(size, "_memory_bytes", lambda: weights - 1)  # the host cannot even build it
    with pytest.raises(ConfigError, match="this machine has"):
        check_model_size(config, **shape, train=TrainConfig(), gpu=gpu)


def test_out_of_memory_is_recognised() -> None:
    from rnnlab.distributed import is_out_of_memory

    cpu = RuntimeError("[enforce fail at alloc_cpu.cpp:127] DefaultCPUAllocator: can't allocate memory: you tried")
    assert is_out_of_memory(cpu) and is_out_of_memory(torch.OutOfMemoryError("CUDA out of memory. Tried"))
    assert is_out_of_memory(RuntimeError("MPS backend out of memory (MPS allocated: 1 GB)"))
    assert not is_out_of_memory(RuntimeError("a bug")) and not is_out_of_memory(ValueError("out of memory"))
    # A full GPU can fail in a CUDA library's own allocation, before torch's allocator is asked
    assert is_out_of_memory(RuntimeError("CUDA error: CUBLAS_STATUS_ALLOC_FAILED when calling `cublasCreate(handle)`"))
    assert is_out_of_memory(RuntimeError("cuDNN error: CUDNN_STATUS_ALLOC_FAILED"))
    assert not is_out_of_memory(RuntimeError("cuDNN error: CUDNN_STATUS_BAD_PARAM"))


@pytest.mark.parametrize("error", [
    "[enforce fail at alloc_cpu.cpp:127] err == 0. DefaultCPUAllocator: can't allocate memory: you tried to "
    "allocate 4000000 bytes. Error code 12 (Cannot allocate memory)", "a bug"])
def test_an_allocation_failure_at_creation_says_what_to_lower(error: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Under the limit, yet more than the memory free now: torch's allocator fails while building.
    def fail(*args, **kwargs):
        raise RuntimeError(error)

    monkeypatch.setattr(registry, "SequenceClassifier", fail)
    if error == "a bug":  # other errors stay what they are
        with pytest.raises(RuntimeError, match="^a bug$"):
            build(hidden=8)
        return
    with pytest.raises(ConfigError, match=r"the model's 1,306 parameters \(.* of float32 weights\) do not fit "
                                          r"in the memory free now: torch could not allocate them; lower model.hidden"):
        build(hidden=8)


class _OnCuda:
    """A CPU batch that says it is on CUDA, to follow the CUDA branch of the recurrence here."""

    def __init__(self, x: torch.Tensor) -> None:
        self.inner, self.device = x, torch.device("cuda")

    def float(self) -> torch.Tensor:
        return self.inner.float()


class _Recorder(torch.nn.Module):
    """Stands in for the recurrent layers: notes what it was given and whether autocast was on."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[object, bool]] = []

    def forward(self, x: object) -> tuple[torch.Tensor, None]:
        self.calls.append((x, torch.is_autocast_enabled("cuda")))
        return torch.zeros(2, 3, 8), None


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_under_cuda_bf16_autocast_the_recurrence_runs_in_fp32(dtype: torch.dtype,
                                                              monkeypatch: pytest.MonkeyPatch) -> None:
    # CUDA autocast casts cuDNN's RNNs to float16 even when bf16 was asked for; under bf16 the
    # recurrence must leave autocast and run in float32. Under fp16 it stays with autocast (and
    # its GradScaler).
    model = create_model(ModelConfig(cell="rnn", hidden=8), input_size=5, seq_len=3, num_classes=2)
    model.rnn = recorder = _Recorder()
    autocast_on = [True]  # what torch.autocast("cuda", enabled=False) inside the model turns off
    monkeypatch.setattr(torch, "is_autocast_enabled", lambda device=None: device == "cuda" and autocast_on[-1])
    monkeypatch.setattr(torch, "get_autocast_dtype", lambda device: dtype)
    monkeypatch.setattr(torch, "autocast", lambda device, enabled: _Toggle(autocast_on, enabled))
    batch = _OnCuda(torch.rand(2, 3, 5))
    model._recurrence(batch)
    (given, autocast_was_on), = recorder.calls
    if dtype == torch.bfloat16:
        assert given is not batch and given.dtype == torch.float32 and not autocast_was_on and model.recurrent_in_fp32
    else:
        assert given is batch and autocast_was_on and not model.recurrent_in_fp32


class _Toggle:
    def __init__(self, state: list[bool], enabled: bool) -> None:
        self.state, self.enabled = state, enabled

    def __enter__(self) -> None:
        self.state.append(self.enabled)

    def __exit__(self, *exc: object) -> None:
        self.state.pop()


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
@pytest.mark.parametrize("cell", ["rnn", "lstm"])
def test_bf16_autocast_on_cuda_keeps_the_recurrence_in_fp32(cell: str) -> None:
    model = create_model(ModelConfig(cell=cell, hidden=16), input_size=28, seq_len=28, num_classes=10).cuda()
    x = torch.rand(4, 28, 28, device="cuda")
    with torch.autocast("cuda", dtype=torch.bfloat16):
        states = model.hidden_states(x)
        logits = model(x)
    assert states.dtype == torch.float32 and logits.dtype == torch.bfloat16 and model.recurrent_in_fp32
    logits.float().sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())


def test_create_model_checks_its_arguments_and_builds_float32() -> None:
    from rnnlab.config import RunConfig

    with pytest.raises(ConfigError, match=r"^create_model takes a ModelConfig \(a run config's .model\), not a RunConfig$"):
        create_model(RunConfig(), input_size=3, seq_len=4, num_classes=2)
    for key, value, low in (("input_size", "28", 1), ("seq_len", 0, 1), ("num_classes", 0, 2), ("input_size", True, 1)):
        sizes = {"input_size": 3, "seq_len": 4, "num_classes": 2, key: value}
        with pytest.raises(ConfigError, match=rf"^create_model: {key}={value!r} must be a whole number >= {low}"):
            create_model(ModelConfig(hidden=8), **sizes)
    assert create_model(ModelConfig(hidden=8), input_size=3, seq_len=4, num_classes=np.int64(2)).num_classes == 2
    for kwargs, message in ((dict(input_std=0.0), r"input_std must be finite and > 0, got \[0.0\]"),
                            (dict(input_mean=float("nan")), r"input_mean must be finite, got \[nan\]"),
                            (dict(input_mean=torch.zeros(2)), r"input_mean has shape \(2,\); give a number or one "
                                                              r"per feature \(3,\)"),
                            (dict(input_std=None), r"input_std must be a number or one per feature \(3,\), not None")):
        with pytest.raises(ConfigError, match=message):  # every logit would be NaN, or fail at the first forward
            create_model(ModelConfig(hidden=8), input_size=3, seq_len=4, num_classes=2, **kwargs)
    torch.set_default_dtype(torch.float64)  # a caller's: the data is float32 all the same
    try:
        model = create_model(ModelConfig(hidden=8), input_size=3, seq_len=4, num_classes=2)
        assert torch.get_default_dtype() == torch.float64
    finally:
        torch.set_default_dtype(torch.float32)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    assert model(torch.rand(2, 4, 3)).dtype == torch.float32
