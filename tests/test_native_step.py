"""The whole SGD step of an Elman stack in C (models/native.py) against the TorchScript step."""

from __future__ import annotations

import copy
import os
from pathlib import Path

import pytest
import torch

from rnnlab.config import ModelConfig
from rnnlab.models import create_model, native
from rnnlab.models.fast_step import sgd_step, step_parameters

pytestmark = pytest.mark.skipif(native.unavailable_reason() is not None,
                                reason=f"no C step here: {native.unavailable_reason()}")

CASES = [dict(nonlinearity="relu"), dict(nonlinearity="relu", layers=3), dict(nonlinearity="tanh", layers=2)]


def _model(case: dict, *, steps: int, features: int, classes: int, mean, std):
    config = ModelConfig(**{"cell": "rnn", "hidden": 13, "impl": "fast", "init": "orthogonal", **case})
    torch.manual_seed(0)
    return create_model(config, input_size=features, seq_len=steps, num_classes=classes, input_mean=mean,
                        input_std=std)


def _data(dtype: torch.dtype, *, rows: int = 300, steps: int = 6, features: int = 5, classes: int = 4):
    g = torch.Generator().manual_seed(2)
    x = (torch.randint(0, 256, (rows, steps, features), generator=g, dtype=torch.uint8) if dtype == torch.uint8
         else torch.randn(rows, steps, features, generator=g))
    return x, torch.randint(0, classes, (rows,), generator=g)


@pytest.mark.parametrize("case", CASES, ids=lambda c: f"{c['nonlinearity']}{c.get('layers', 1)}")
@pytest.mark.parametrize(("dtype", "smoothing"), [(torch.uint8, 0.0), (torch.float32, 0.1)], ids=["pixels", "own"])
def test_c_steps_train_as_the_torchscript_steps_do(case: dict, dtype: torch.dtype, smoothing: float) -> None:
    """Twenty steps from the same weights on the same batches: the same losses, correct counts and
    weights to float32 rounding (the C step adds the bias after the step's GEMM, and has its own exp).
    Pixels are scaled by 1/255; a sequence file's features standardised per feature."""
    x, y = _data(dtype)
    mean, std = (0.3, 0.7) if dtype == torch.uint8 else (torch.linspace(-1, 1, 5), torch.linspace(0.5, 2, 5))
    model = _model(case, steps=6, features=5, classes=4, mean=mean, std=std)
    twin = copy.deepcopy(model)
    in_c = native.native_step(twin, x, y)
    assert in_c is not None
    params, twin_params = step_parameters(model), step_parameters(twin)
    g = torch.Generator().manual_seed(3)
    for step in range(20):
        batch = torch.randperm(300, generator=g)[:32 if step % 2 else 7]  # the last batch of an epoch is smaller
        expected = sgd_step(model, x, y, batch, lr=0.2, label_smoothing=smoothing, params=params)
        got = in_c(batch, 0.2, smoothing)
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-5)
    for a, b in zip(params, twin_params, strict=True):
        torch.testing.assert_close(b, a, rtol=1e-5, atol=1e-6)
    assert all(p.grad is None for p in twin.parameters())  # as sgd_step: no .grad is written


@pytest.mark.parametrize("impl", ["auto", "fast"])  # torch.nn's LSTM (chosen by default), or rnnlab's
@pytest.mark.parametrize(("layers", "dtype", "smoothing"), [(1, torch.uint8, 0.0), (2, torch.float32, 0.1)],
                         ids=["1-pixels", "2-own"])
def test_c_lstm_steps_train_as_autograd_through_the_lstm_does(impl: str, layers: int, dtype: torch.dtype,
                                                              smoothing: float) -> None:
    """The same twenty steps by autograd through the model (cross-entropy, backward, torch's SGD)
    and in C: the same losses and weights to float32 rounding."""
    import torch.nn.functional as F

    x, y = _data(dtype)
    mean, std = (0.3, 0.7) if dtype == torch.uint8 else (torch.linspace(-1, 1, 5), torch.linspace(0.5, 2, 5))
    model = _model(dict(cell="lstm", layers=layers, impl=impl), steps=6, features=5, classes=4, mean=mean, std=std)
    assert (type(model.rnn).__name__ == "LSTM") == (impl == "auto")
    twin = copy.deepcopy(model)
    in_c = native.native_step(twin, x, y)
    assert in_c is not None
    optimizer = torch.optim.SGD(model.parameters(), lr=0.3)
    g = torch.Generator().manual_seed(3)
    for step in range(20):
        batch = torch.randperm(300, generator=g)[:32 if step % 2 else 7]
        inputs = x[batch].float() / 255 if dtype == torch.uint8 else x[batch]
        losses = F.cross_entropy(model(inputs), y[batch], label_smoothing=smoothing, reduction="none")
        optimizer.zero_grad()
        losses.mean().backward()
        optimizer.step()
        got = in_c(batch, 0.3, smoothing)
        torch.testing.assert_close(got[0], losses.sum().detach(), rtol=1e-5, atol=1e-5)
    for (name, a), b in zip(model.named_parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(b, a.detach(), rtol=1e-5, atol=1e-6, msg=name)


def test_a_nan_loss_is_kept_from_the_weights_only_where_the_step_looks() -> None:
    x, y = _data(torch.uint8)
    model = _model(CASES[0], steps=6, features=5, classes=4, mean=0.3, std=0.7)
    in_c = native.native_step(model, x, y)
    with torch.no_grad():
        model.head.bias[0] = float("nan")  # NaN logits: a NaN loss (and argmax NaN, as torch's)
    before = [p.clone() for p in model.parameters()]
    totals = in_c(torch.arange(10), 0.1, guard=True)
    assert torch.isnan(totals[0])
    assert all(torch.equal(a, b) for a, b in zip(before, model.parameters()) if not a.isnan().any())
    in_c(torch.arange(10), 0.1)  # no guard: the update spreads the NaN, as the TorchScript step's does
    assert torch.isnan(model.rnn.weight_hh_l0).any()


def test_indices_and_labels_out_of_range_are_errors_that_change_nothing() -> None:
    x, y = _data(torch.uint8)
    model = _model(CASES[0], steps=6, features=5, classes=4, mean=0.3, std=0.7)
    before = copy.deepcopy(model.state_dict())
    with pytest.raises(IndexError, match=r"a training index is outside 0\.\.299"):
        native.native_step(model, x, y)(torch.tensor([0, 300]), 0.1)
    y[5] = 4
    with pytest.raises(ValueError, match=r"a label is outside 0\.\.3"):
        native.native_step(model, x, y)(torch.tensor([5]), 0.1)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_only_what_the_c_step_computes_is_given_to_it() -> None:
    x, y = _data(torch.uint8)

    def why(data_x=x, **case):
        return native.unsupported(_model({"nonlinearity": "relu", **case}, steps=6, features=5, classes=4,
                                         mean=0.3, std=0.7), data_x, y)

    assert why() is None
    assert "one direction read at the last step" in why(bidirectional=True)
    assert "one direction read at the last step" in why(readout="mean")
    assert "Elman or LSTM" in why(cell="gru")
    assert why(cell="lstm") is None
    assert "model.impl not torch" in why(cell="lstm", impl="torch")
    assert "no dropout between layers" in why(cell="lstm", layers=2, dropout=0.1)
    assert "uint8 or float32" in why(data_x=x.double())
    model = _model(CASES[0], steps=6, features=5, classes=4, mean=0.3, std=0.7).double()
    assert "float32" in native.unsupported(model, x, y)


def test_the_library_is_built_once_per_source_compiler_and_cpu(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("RNNLAB_CACHE_DIR", str(tmp_path))
    compiler = next(c for c in ("cc", "gcc", "clang") if native.shutil.which(c))
    built = native._built(compiler)
    assert built.parent == tmp_path / "native" and built.exists()
    stamp = built.stat().st_mtime_ns
    assert native._built(compiler) == built and built.stat().st_mtime_ns == stamp  # from the cache
    assert not [p for p in built.parent.iterdir() if p.name.startswith(".")]  # no partial file left
    monkeypatch.setattr(native, "_cpu_identity", lambda: "another CPU")
    assert native._built(compiler) != built  # code built for one CPU is never run on another


def test_where_it_cannot_be_built_the_reason_is_kept(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(native, "_library", [])
    monkeypatch.setattr(native, "_why_not", [])
    monkeypatch.setenv("RNNLAB_CACHE_DIR", str(tmp_path))
    broken = tmp_path / "broken-cc"
    broken.write_text("#!/bin/sh\necho 'cc: error: this compiler is broken' >&2\nexit 1\n")
    broken.chmod(0o755)
    monkeypatch.setenv("CC", str(broken))
    assert native.library() is None
    assert "could not build native_step.c: cc: error: this compiler is broken" in native.unavailable_reason()
    monkeypatch.setattr(native, "_library", [])
    monkeypatch.setattr(native, "_why_not", [])
    monkeypatch.delenv("CC")
    monkeypatch.setenv("PATH", str(tmp_path / "nothing-here"))
    assert native.library() is None and native.unavailable_reason().startswith("no C compiler")


@pytest.mark.parametrize(("cell", "otherwise"), [("rnn", "by hand"), ("lstm", "autograd")])
def test_the_trainer_takes_every_plain_sgd_step_in_c_and_resumes_exactly(cell: str, otherwise: str,
                                                                         tmp_path: Path) -> None:
    """The tutorials' footing (an Elman or LSTM stack, plain SGD): every step in C, the NaN checks
    included; a run stopped and resumed ends bit for bit where one that never stopped does; and it
    learns as the steps without C do (RNNLAB_NATIVE=0: TorchScript by hand, or autograd for torch.nn's LSTM)."""
    import rnnlab

    cfg = rnnlab.apply_overrides(rnnlab.RunConfig(), [
        "train.device=cpu", f"model.cell={cell}", *(["model.nonlinearity=relu"] if cell == "rnn" else []),
        "model.hidden=16", "model.layers=2",
        "train.batch_size=50", "train.iterations=45", "train.eval_every=20", "data.val_size=1000",
        "train.threads=1", "train.optimizer=sgd", "train.lr=0.05", "train.clip=0"])
    whole = rnnlab.train(cfg, tmp_path / "whole", progress=False)
    assert whole.summary["backward"] == "by hand, in C"
    part = rnnlab.train(cfg, tmp_path / "part", progress=False, stop_after=13)
    resumed = rnnlab.resume(part.dir, progress=False)
    a = torch.load(whole.dir / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(resumed.dir / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(a[key], b[key]) for key in a)
    try:
        native.ENABLED = False
        scripted = rnnlab.train(cfg, tmp_path / "scripted", progress=False)
    finally:
        native.ENABLED = True
    assert scripted.summary["backward"] == otherwise
    c = torch.load(scripted.dir / "checkpoint.pt", weights_only=True)["model"]
    for key in a:
        torch.testing.assert_close(a[key], c[key], rtol=1e-4, atol=1e-5, msg=key)


def test_a_diverging_run_stops_before_the_update_that_would_spread_the_nan(tmp_path: Path) -> None:
    import rnnlab

    cfg = rnnlab.apply_overrides(rnnlab.RunConfig(), [
        "train.device=cpu", "model.cell=rnn", "model.nonlinearity=relu", "model.hidden=16", "train.batch_size=50",
        "train.iterations=60", "data.val_size=1000", "train.threads=1", "train.optimizer=sgd", "train.lr=1e6",
        "train.clip=0"])
    run = rnnlab.train(cfg, tmp_path / "run", progress=False)
    assert run.summary["status"] == "diverged"
    assert run.summary["backward"] == "by hand, in C"


@pytest.mark.skipif(os.name != "posix", reason="a POSIX environment variable test")
def test_rnnlab_native_0_switches_it_off(tmp_path: Path) -> None:
    import subprocess
    import sys

    code = "from rnnlab.models import native; print(native.ENABLED)"
    env = {**os.environ, "RNNLAB_NATIVE": "0"}
    assert subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True).stdout.strip() == "False"


def test_a_cache_it_cannot_write_builds_in_a_folder_of_its_own(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    blocked = tmp_path / "file-not-folder"
    blocked.write_text("")
    monkeypatch.setenv("RNNLAB_CACHE_DIR", str(blocked))  # <it>/native cannot be made
    compiler = next(c for c in ("cc", "gcc", "clang") if native.shutil.which(c))
    built = native._built(compiler)
    assert built.exists() and built.parent.name.startswith("rnnlab-native-") and built.parent.stat().st_mode & 0o077 == 0


def test_a_library_that_will_not_load_leaves_the_other_steps(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(native, "_library", [])
    monkeypatch.setattr(native, "_why_not", [])
    not_a_library = tmp_path / "native_step-0.so"
    not_a_library.write_text("not an ELF file")
    monkeypatch.setattr(native, "_built", lambda compiler: not_a_library)
    assert native.library() is None
    assert native.unavailable_reason().startswith("the C step could not be built or loaded")
    x, y = _data(torch.uint8)
    model = _model(CASES[0], steps=6, features=5, classes=4, mean=0.3, std=0.7)
    assert native.native_step(model, x, y) is None


def test_steps_in_one_call_are_the_steps_one_by_one() -> None:
    """run(): the steps between two looks for a NaN loss in one call, each with its own batch and
    learning rate, give the weights and totals of the same steps called one by one, bit for bit."""
    x, y = _data(torch.uint8)
    model = _model(dict(nonlinearity="tanh", layers=2), steps=6, features=5, classes=4, mean=0.3, std=0.7)
    twin = copy.deepcopy(model)
    batches = torch.randperm(300, generator=torch.Generator().manual_seed(4))[:5 * 16].view(5, 16)
    lrs = [0.3, 0.25, 0.2, 0.15, 0.1]
    one_by_one = native.native_step(model, x, y)
    expected = torch.stack([one_by_one(batch, lr, 0.1) for batch, lr in zip(batches, lrs)])
    together = native.native_step(twin, x, y).run(batches, lrs, 0.1)
    assert torch.equal(together, expected)
    assert all(torch.equal(a, b) for a, b in zip(model.parameters(), twin.parameters()))


def test_the_trainer_takes_the_steps_between_nan_checks_in_one_call(tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    import rnnlab

    calls: list[int] = []
    real_run = native.NativeStep.run
    monkeypatch.setattr(native.NativeStep, "run", lambda self, steps, *a: calls.append(len(steps)) or
                        real_run(self, steps, *a))
    cfg = rnnlab.apply_overrides(rnnlab.RunConfig(), [
        "train.device=cpu", "model.cell=rnn", "model.hidden=8", "train.batch_size=50", "train.iterations=45",
        "train.eval_every=30", "data.val_size=1000", "train.threads=1", "train.optimizer=sgd", "train.clip=0"])
    run = rnnlab.train(cfg, tmp_path / "run", progress=False)
    assert run.summary["status"] == "completed" and run.summary["iterations"] == 45
    # NaN looks in steps 20, 30 (before an evaluation), 40 and 45 (the last), each a call of its own: the
    # steps between them in one call each
    assert calls == [19, 9, 9, 4]


def test_steps_in_one_call_stop_at_the_end_of_an_epoch(tmp_path: Path) -> None:
    """An epoch's steps in one call never run into the next epoch's order, nor its last partial batch
    (59,000 training rows in batches of 1,000 and 700): the run ends where the steps one by one end."""
    import rnnlab

    for batch in (1000, 700):
        cfg = rnnlab.apply_overrides(rnnlab.RunConfig(), [
            "train.device=cpu", "model.cell=rnn", "model.hidden=8", f"train.batch_size={batch}",
            "train.iterations=130", "data.val_size=1000", "train.threads=1", "train.optimizer=sgd", "train.clip=0",
            "train.eval_every=1000"])
        together = rnnlab.train(cfg, tmp_path / f"together-{batch}", progress=False)
        try:
            native.ENABLED = False
            apart = rnnlab.train(cfg, tmp_path / f"apart-{batch}", progress=False)
        finally:
            native.ENABLED = True
        assert together.summary["samples"] == apart.summary["samples"]
        a = torch.load(together.dir / "checkpoint.pt", weights_only=True)["model"]
        b = torch.load(apart.dir / "checkpoint.pt", weights_only=True)["model"]
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)
