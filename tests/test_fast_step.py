"""The hand-written training step (models/fast_step.py) against autograd on the same model."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F

from rnnlab.config import ModelConfig
from rnnlab.errors import ConfigError
from rnnlab.models import create_model, fast_kernels, native
from rnnlab.models.fast_step import _stack_step, hand_step_supported, loss_and_grads

CASES = [
    dict(cell="rnn", nonlinearity="relu"),
    dict(cell="rnn", nonlinearity="tanh", layers=2),
    dict(cell="rnn", nonlinearity="relu", bidirectional=True),
    dict(cell="rnn", nonlinearity="tanh", layers=2, bidirectional=True, readout="all"),
    dict(cell="gru"),
    dict(cell="gru", layers=2, bidirectional=True, readout="mean"),
    dict(cell="lstm", readout="mean"),
    dict(cell="lstm", layers=2, bidirectional=True),
    dict(cell="rnn", nonlinearity="relu", layers=2, readout="mean", dropout=0.0),
    dict(cell="gru", readout="all", init="default"),
]


def _model(case: dict, *, steps: int, features: int, classes: int, mean: float = 0.3, std: float = 2.0):
    config = ModelConfig(**{"hidden": 7, "impl": "fast", "init": "orthogonal", **case})
    torch.manual_seed(0)
    return create_model(config, input_size=features, seq_len=steps, num_classes=classes,
                        input_mean=mean, input_std=std).double()


@pytest.mark.parametrize("case", CASES, ids=lambda c: "-".join(f"{v}" for v in c.values()))
@pytest.mark.parametrize(("steps", "smoothing"), [(5, 0.0), (1, 0.1)])
@pytest.mark.parametrize("script", [True, False], ids=["torchscript", "python"])
def test_hand_step_equals_autograd(case: dict, steps: int, smoothing: float, script: bool,
                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """Compiled with TorchScript, or as the same code in Python where TorchScript is not to be had."""
    monkeypatch.setattr(fast_kernels, "SCRIPT", script)
    batch, features, classes = 6, 3, 4
    model = _model(case, steps=steps, features=features, classes=classes)
    x = torch.rand(batch, steps, features, dtype=torch.float64, generator=torch.Generator().manual_seed(1))
    y = torch.tensor([0, 3, 1, 1, 2, 3])
    scale = 1 / batch
    expected_losses = F.cross_entropy(logits := model(x), y, label_smoothing=smoothing, reduction="none")
    (expected_losses.sum() * scale).backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    losses, hand_logits = loss_and_grads(model, x, y, label_smoothing=smoothing, scale=scale)
    torch.testing.assert_close(losses, expected_losses.detach(), rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(hand_logits, logits.detach(), rtol=1e-10, atol=1e-12)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], rtol=1e-8, atol=1e-10, msg=name)


def test_the_step_is_one_torchscript_function() -> None:
    assert fast_kernels.is_scripted(fast_kernels.compiled(_stack_step))


def test_one_layer_with_dropout_one_sequence_and_more_classes_than_features() -> None:
    """torch.nn applies model.dropout only between layers: a one-layer model with it is trained by hand."""
    model = _model(dict(cell="gru", dropout=0.5, readout="all"), steps=3, features=2, classes=9).train()
    assert hand_step_supported(model, amp="off", processes=1, varying_lengths=False) is None
    x, y = torch.rand(1, 3, 2, dtype=torch.float64), torch.tensor([8])
    F.cross_entropy(model(x), y, label_smoothing=0.2).backward()
    expected = {name: p.grad.clone() for name, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    loss_and_grads(model, x, y, label_smoothing=0.2)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, expected[name], rtol=1e-8, atol=1e-10, msg=name)


def test_gradients_accumulate_like_backward() -> None:
    model = _model(dict(cell="rnn", nonlinearity="relu"), steps=4, features=3, classes=3)
    x, y = torch.rand(5, 4, 3, dtype=torch.float64), torch.tensor([0, 1, 2, 0, 1])
    loss_and_grads(model, x, y)
    once = {n: p.grad.clone() for n, p in model.named_parameters()}
    loss_and_grads(model, x, y)
    for name, p in model.named_parameters():
        torch.testing.assert_close(p.grad, 2 * once[name])


def test_where_the_hand_step_applies() -> None:
    fast = _model(dict(cell="gru"), steps=3, features=2, classes=2)
    assert hand_step_supported(fast, amp="off", processes=1, varying_lengths=False) is None
    assert "autocast" in hand_step_supported(fast, amp="bf16", processes=1, varying_lengths=False)
    assert "torchrun" in hand_step_supported(fast, amp="off", processes=2, varying_lengths=False)
    assert "varying length" in hand_step_supported(fast, amp="off", processes=1, varying_lengths=True)
    reference = _model(dict(cell="gru", impl="torch"), steps=3, features=2, classes=2)
    assert "torch.nn" in hand_step_supported(reference, amp="off", processes=1, varying_lengths=False)
    dropout = _model(dict(cell="gru", layers=2, dropout=0.2), steps=3, features=2, classes=2)
    assert "dropout" in hand_step_supported(dropout, amp="off", processes=1, varying_lengths=False)


def test_the_hand_step_leaves_subclasses_and_hooks_to_autograd() -> None:
    """It writes out SequenceClassifier's own forward: another forward, or a hook it would skip,
    sends the step to autograd."""
    from rnnlab.models.recurrent import SequenceClassifier

    class Scaled(SequenceClassifier):
        def forward(self, x, lengths=None):
            return 2 * super().forward(x, lengths)

    model = _model(dict(cell="rnn"), steps=3, features=2, classes=2)
    subclass = Scaled(model.config, input_size=2, seq_len=3, num_classes=2)
    assert "Scaled" in hand_step_supported(subclass, amp="off", processes=1, varying_lengths=False)
    handle = model.head.register_forward_hook(lambda module, args, out: out * 2)
    assert "hooks" in hand_step_supported(model, amp="off", processes=1, varying_lengths=False)
    handle.remove()
    model.rnn.weight_hh_l0.register_post_accumulate_grad_hook(lambda p: None)
    assert "hooks" in hand_step_supported(model, amp="off", processes=1, varying_lengths=False)


def test_training_by_hand_follows_autograd_and_resumes_exactly(tmp_path) -> None:
    """In the Trainer: the same run by hand and by autograd ends with the same weights up to
    float32 rounding, and a run stopped and resumed by hand ends bitwise where an unstopped one does."""
    import rnnlab

    base = ["train.device=cpu", "model.cell=rnn", "model.nonlinearity=relu", "model.hidden=16", "train.batch_size=50",
            "train.iterations=30", "train.eval_every=10", "data.val_size=1000", "train.threads=1",
            "train.optimizer=sgd", "train.lr=0.05", "train.momentum=0.9", "train.clip=1.0",
            "train.label_smoothing=0.1"]
    cfg = rnnlab.apply_overrides(rnnlab.RunConfig(), base)
    by_hand = rnnlab.train(cfg, tmp_path / "hand", progress=False)
    autograd = rnnlab.train(rnnlab.apply_overrides(cfg, ["train.backward=autograd"]), tmp_path / "autograd",
                            progress=False)
    assert (by_hand.summary["backward"], autograd.summary["backward"]) == ("by hand", "autograd")
    a = torch.load(by_hand.dir / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(autograd.dir / "checkpoint.pt", weights_only=True)["model"]
    for key in a:
        torch.testing.assert_close(a[key], b[key], rtol=1e-4, atol=1e-5, msg=key)
    part = rnnlab.train(cfg, tmp_path / "part", progress=False, stop_after=13)
    resumed = rnnlab.resume(part.dir, progress=False)
    c = torch.load(resumed.dir / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(a[key], c[key]) for key in a)
    lstm = rnnlab.train(rnnlab.apply_overrides(rnnlab.RunConfig(), [*base[3:], "model.cell=lstm"]), tmp_path / "lstm",
                        progress=False)
    assert lstm.summary["backward"] == "autograd"  # impl=auto gives LSTMs torch.nn's layers (oneDNN)
    insisted = rnnlab.train(rnnlab.apply_overrides(cfg, ["train.backward=hand", "train.iterations=2"]),
                            tmp_path / "insisted", progress=False)
    assert insisted.summary["backward"] == "by hand"
    with pytest.raises(ConfigError, match=r"train.backward=hand: this run's step cannot be taken by hand \(the "
                                          r"recurrent layers are torch.nn's \(model.impl\)\); use train.backward=auto"):
        rnnlab.train(rnnlab.apply_overrides(rnnlab.RunConfig(), [*base[3:], "model.cell=lstm", "train.backward=hand"]),
                     tmp_path / "lstm-hand", progress=False)


def test_frozen_parameters_get_no_gradient() -> None:
    """As with backward(): a parameter with requires_grad=False keeps .grad None, the others are autograd's."""
    model = _model(dict(cell="gru", layers=2), steps=4, features=3, classes=5)
    frozen = {"rnn.weight_ih_l0", "rnn.bias_hh_l1", "head.weight"}
    for name, p in model.named_parameters():
        p.requires_grad_(name not in frozen)
    x, y = torch.rand(2, 4, 3, dtype=torch.float64), torch.tensor([4, 1])
    F.cross_entropy(model(x), y, reduction="sum").backward()
    expected = {name: p.grad for name, p in model.named_parameters()}
    model.zero_grad(set_to_none=True)
    loss_and_grads(model, x, y)
    for name, p in model.named_parameters():
        if name in frozen:
            assert p.grad is None and expected[name] is None, name
        else:
            torch.testing.assert_close(p.grad, expected[name], rtol=1e-8, atol=1e-10, msg=name)


WHOLE_CASES = [["model.cell=rnn", "model.nonlinearity=relu"],
               ["model.cell=gru", "model.bidirectional=true", "model.readout=mean", "train.label_smoothing=0.1"],
               ["model.cell=rnn", "model.nonlinearity=tanh", "model.layers=2", "model.readout=all"]]


@pytest.mark.parametrize("case", WHOLE_CASES, ids=lambda c: c[0].partition("=")[2] + str(len(c)))
def test_whole_sgd_steps_train_what_the_step_and_the_update_apart_train(case: list, tmp_path,
                                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    """Plain SGD: the steps between NaN checks are one call, batch and update included (sgd_step), and
    the run is the same, bit for bit, as with the batch, the step and the optimizer one after another."""
    import rnnlab
    from rnnlab import engine
    from rnnlab.engine import Trainer

    cfg = rnnlab.apply_overrides(rnnlab.RunConfig(), [
        "train.device=cpu", "model.hidden=16", "train.batch_size=50", "train.iterations=45", "train.eval_every=20",
        "data.val_size=1000", "train.threads=1", "train.optimizer=sgd", "train.lr=0.05", "train.clip=0", *case])
    calls: list[int] = []
    real_step = engine.sgd_step
    monkeypatch.setattr(engine, "sgd_step", lambda *a, **k: calls.append(1) or real_step(*a, **k))
    monkeypatch.setattr(native, "ENABLED", False)  # the TorchScript step; the C one: test_native_step.py
    weights, metrics = [], []
    for whole in (True, False):
        trainer = Trainer(cfg, tmp_path / f"whole-{whole}", progress=False)
        assert trainer._whole_sgd_steps()
        if not whole:
            monkeypatch.setattr(trainer, "_whole_sgd_steps", lambda: False)
        summary = trainer.fit()
        assert summary["status"] == "completed"
        weights.append(trainer.model.state_dict())
        metrics.append([(row["train_loss"], row["val_accuracy"]) for row in rnnlab.read_run(trainer.run_dir).metrics()])
        if whole:  # every step but those before a NaN check (each 20th; before an evaluation; the last)
            assert len(calls) == 45 - 3
    assert len(calls) == 42  # the run apart made none
    assert all(torch.equal(weights[0][key], weights[1][key]) for key in weights[0])
    assert metrics[0] == metrics[1]


def test_whole_sgd_steps_only_for_plain_sgd_with_nothing_around_it(tmp_path) -> None:
    import rnnlab
    from rnnlab.engine import Trainer

    base = ["train.device=cpu", "model.hidden=8", "train.iterations=4", "data.val_size=1000", "train.threads=1",
            "train.optimizer=sgd", "train.clip=0"]

    def whole(*extra: str) -> bool:
        return Trainer(rnnlab.apply_overrides(rnnlab.RunConfig(), [*base, *extra]), tmp_path / "r",
                       progress=False)._whole_sgd_steps()

    assert whole("model.cell=rnn")
    assert not whole("model.cell=rnn", "train.momentum=0.9")
    assert not whole("model.cell=rnn", "train.weight_decay=0.0001")
    assert not whole("model.cell=rnn", "train.clip=1.0")  # clipping reads the gradients
    assert not whole("model.cell=rnn", "train.optimizer=adam")
    assert not whole("model.cell=rnn", "train.backward=autograd")
    trainer = Trainer(rnnlab.apply_overrides(rnnlab.RunConfig(), [*base, "model.cell=rnn"]), tmp_path / "r",
                      progress=False)
    handle = trainer.optimizer.register_step_pre_hook(lambda optimizer, args, kwargs: None)
    assert not trainer._whole_sgd_steps()  # a hook of the caller's runs as it would
    handle.remove()
    assert trainer._whole_sgd_steps()
    update = trainer.optimizer.step
    trainer.optimizer.step = lambda *args, **kwargs: update(*args, **kwargs)  # a caller's wrapper (tests' signals)
    assert not trainer._whole_sgd_steps()  # would be skipped by the steps in one call
    del trainer.optimizer.step
    torch.optim.lr_scheduler.StepLR(trainer.optimizer, step_size=10)  # wraps step only to note that it ran
    assert trainer._whole_sgd_steps()
    trainer.model.head.bias.requires_grad_(False)
    assert not trainer._whole_sgd_steps()  # frozen: the optimizer's step would skip it


def test_whole_sgd_steps_resume_exactly(tmp_path) -> None:
    """A run of whole-SGD steps stopped mid-way (off the NaN-check rhythm) and resumed ends bit for bit
    where the run never stopped does: which steps run whole depends on where a call ends, not the sums."""
    import rnnlab

    cfg = rnnlab.apply_overrides(rnnlab.RunConfig(), [
        "train.device=cpu", "model.cell=gru", "model.hidden=16", "train.batch_size=50", "train.iterations=45",
        "train.eval_every=20", "data.val_size=1000", "train.threads=1", "train.optimizer=sgd", "train.lr=0.05",
        "train.clip=0"])
    whole = rnnlab.train(cfg, tmp_path / "whole", progress=False)
    part = rnnlab.train(cfg, tmp_path / "part", progress=False, stop_after=13)
    resumed = rnnlab.resume(part.dir, progress=False)
    a = torch.load(whole.dir / "checkpoint.pt", weights_only=True)["model"]
    b = torch.load(resumed.dir / "checkpoint.pt", weights_only=True)["model"]
    assert all(torch.equal(a[key], b[key]) for key in a)
    assert whole.summary["test_accuracy"] == resumed.summary["test_accuracy"]
