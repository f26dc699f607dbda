"""FastRecurrent must match torch.nn.RNN/LSTM/GRU: outputs, states and all gradients."""

from __future__ import annotations

import itertools

import pytest
import torch
from torch import nn

from rnnlab.models.fast import FastRecurrent, fast_supported, make_recurrent
from rnnlab.models.fast_layer import layer_backward, layer_forward

MODES = ["rnn_relu", "rnn_tanh", "lstm", "gru"]
F, H, B = 7, 13, 5


def _pair(mode: str, layers: int, bidir: bool, dtype: torch.dtype = torch.float64,
          dropout: float = 0.0) -> tuple[nn.Module, nn.Module]:
    torch.manual_seed(0)
    ref = make_recurrent(mode, F, H, layers, bidir, dropout, impl="torch").to(dtype)
    fast = make_recurrent(mode, F, H, layers, bidir, dropout, impl="fast").to(dtype)
    fast.load_state_dict(ref.state_dict())
    return ref, fast


def _run(m: nn.Module, x: torch.Tensor, hx, mode: str):
    """Forward + a loss touching output and final states; returns all values and grads."""
    x = x.clone().requires_grad_(True)
    if hx is not None:
        hx = tuple(h.clone().requires_grad_(True) for h in hx)
    out, state = m(x, None if hx is None else (hx if mode == "lstm" else hx[0]))
    states = state if mode == "lstm" else (state,)
    g = torch.Generator().manual_seed(1)
    loss = (out * torch.randn(out.shape, generator=g, dtype=out.dtype)).sum()
    for s in states:
        loss = loss + (s * torch.randn(s.shape, generator=g, dtype=s.dtype)).sum()
    loss.backward()
    grads = {n: p.grad for n, p in m.named_parameters()}
    grads["x"] = x.grad
    if hx is not None:
        for i, h in enumerate(hx):
            grads[f"hx{i}"] = h.grad
    return out, states, grads


def _assert_same(fast_run: tuple, ref_run: tuple, rtol: float = 1e-5, atol: float = 1e-8) -> None:
    """The (output, states, grads) of _run on the fast layer equal those of torch.nn."""
    (o2, s2, g2), (o1, s1, g1) = fast_run, ref_run
    assert o2.shape == o1.shape
    torch.testing.assert_close(o2, o1, rtol=rtol, atol=atol)
    assert len(s2) == len(s1)
    for a, b in zip(s2, s1):
        assert a.shape == b.shape
        torch.testing.assert_close(a, b, rtol=rtol, atol=atol)
    assert g1.keys() == g2.keys()
    for k in g1:
        torch.testing.assert_close(g2[k], g1[k], rtol=rtol, atol=atol, msg=k)


@pytest.mark.parametrize(
    "mode,layers,bidir,T,with_hx",
    list(itertools.product(MODES, [1, 2, 3], [False, True], [1, 28], [False, True])))
def test_matches_torch(mode: str, layers: int, bidir: bool, T: int, with_hx: bool) -> None:
    ref, fast = _pair(mode, layers, bidir)
    torch.manual_seed(2)
    x = torch.randn(B, T, F, dtype=torch.float64)
    D = 2 if bidir else 1
    hx = None
    if with_hx:
        n = 2 if mode == "lstm" else 1
        hx = tuple(torch.randn(layers * D, B, H, dtype=torch.float64) for _ in range(n))
    expected, got = _run(ref, x, hx, mode), _run(fast, x, hx, mode)
    assert got[0].shape == (B, T, D * H)
    _assert_same(got, expected)


@pytest.mark.parametrize("mode", MODES)
def test_float32_close(mode: str) -> None:
    ref, fast = _pair(mode, 2, False, torch.float32)
    x = torch.randn(B, 28, F)
    o1, s1, g1 = _run(ref, x, None, mode)
    o2, s2, g2 = _run(fast, x, None, mode)
    torch.testing.assert_close(o2, o1, rtol=1e-4, atol=1e-5)
    for k in g1:
        torch.testing.assert_close(g2[k], g1[k], rtol=1e-4, atol=1e-5, msg=k)


@pytest.mark.parametrize("mode", MODES)
def test_gradcheck(mode: str) -> None:
    torch.manual_seed(0)
    m = FastRecurrent(mode, 2, 3, num_layers=2, bidirectional=True).double()
    x = torch.randn(2, 4, 2, dtype=torch.float64, requires_grad=True)
    n = 2 if mode == "lstm" else 1
    hx = [torch.randn(4, 2, 3, dtype=torch.float64, requires_grad=True) for _ in range(n)]
    params = list(m.parameters())

    def f(x, *rest):
        hs, ws = rest[:n], rest[n:]
        sd = dict(zip([k for k, _ in m.named_parameters()], ws))
        out, st = torch.func.functional_call(m, sd, (x, tuple(hs) if n == 2 else hs[0]))
        return (out, *(st if n == 2 else (st,)))

    assert torch.autograd.gradcheck(f, (x, *hx, *[p.detach().requires_grad_() for p in params]))


@pytest.mark.parametrize("mode", MODES)
def test_state_dict_interchangeable(mode: str) -> None:
    ref = make_recurrent(mode, F, H, 2, True, impl="torch")
    fast = make_recurrent(mode, F, H, 2, True, impl="fast")
    assert [(k, v.shape) for k, v in ref.state_dict().items()] == \
           [(k, v.shape) for k, v in fast.state_dict().items()]
    ref.load_state_dict(fast.state_dict())
    # Same seed -> same initial weights: init does not depend on the implementation.
    torch.manual_seed(5)
    a = make_recurrent(mode, F, H, 2, impl="torch").state_dict()
    torch.manual_seed(5)
    b = make_recurrent(mode, F, H, 2, impl="fast").state_dict()
    for k in a:
        assert torch.equal(a[k], b[k]), k


@pytest.mark.parametrize("mode", MODES)
def test_dropout_between_layers(mode: str) -> None:
    ref, fast = _pair(mode, 2, False, dropout=0.5)
    x = torch.randn(B, 6, F, dtype=torch.float64)
    ref.eval(), fast.eval()  # eval: dropout off, must match exactly
    torch.testing.assert_close(fast(x)[0], ref(x)[0])
    fast.train()
    torch.manual_seed(3)
    o1 = fast(x)[0]
    torch.manual_seed(3)
    o2 = fast(x)[0]
    torch.testing.assert_close(o1, o2)  # reproducible under a seed
    assert not torch.allclose(o1, ref(x)[0])  # and dropout really did something
    o1.sum().backward()
    assert all(p.grad is not None for p in fast.parameters())


def test_fallbacks_match() -> None:
    """Paths that go to the reference math still give the reference answer."""
    ref, fast = _pair("lstm", 1, False, torch.float32)
    x = torch.randn(B, 4, F)
    unbatched = torch.randn(4, F)
    torch.testing.assert_close(fast(unbatched)[0], ref(unbatched)[0])
    with torch.autocast("cpu", dtype=torch.bfloat16):
        try:
            expected = ref(x)[0]
        except RuntimeError as exc:  # oneDNN without a bf16 LSTM for this CPU
            pytest.skip(f"torch.nn.LSTM itself fails under bf16 autocast here: {exc}")
        torch.testing.assert_close(fast(x)[0], expected)


@pytest.mark.parametrize("mode,bidir", [(m, b) for m in MODES for b in (False, True)])
def test_without_autograd_the_elman_layers_keep_their_fast_path_and_equal_torch(mode: str, bidir: bool) -> None:
    ref, fast = _pair(mode, 2, bidir)
    for batch in (1, 5, 8):
        x = torch.randn(batch, 9, F, dtype=torch.float64)
        # GRU, LSTM: torch.nn's own forward; tanh too on fewer than 8 sequences, where it is faster
        fast_path = mode == "rnn_relu" or (mode == "rnn_tanh" and batch >= 8)
        for no_autograd in (torch.no_grad, torch.inference_mode):
            with no_autograd():
                assert fast._fast_ok(x) == fast_path
                (out, state), (ref_out, ref_state) = fast(x), ref(x)
            torch.testing.assert_close(out, ref_out, rtol=1e-5, atol=1e-8)
            for a, b in zip(state if mode == "lstm" else (state,), ref_state if mode == "lstm" else (ref_state,)):
                torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-8)
        assert fast._fast_ok(x)  # with autograd: always the fast path


def test_the_batch_size_that_picks_the_inference_path_is_read_from_the_right_dimension() -> None:
    fast = FastRecurrent("rnn_tanh", F, H, batch_first=False)
    with torch.no_grad():
        assert fast._fast_ok(torch.randn(9, 8, F))  # (T, B, F): 8 sequences of 9 steps
        assert not fast._fast_ok(torch.randn(9, 1, F))  # 1 sequence of 9 steps


def test_no_grad_and_errors() -> None:
    ref, fast = _pair("gru", 2, True)
    x = torch.randn(B, 9, F, dtype=torch.float64)
    with torch.no_grad():
        torch.testing.assert_close(fast(x)[0], ref(x)[0])
    with pytest.raises(RuntimeError, match=rf"Expected h0 size \(4, {B}, {H}\), got \(1, {B}, {H}\)"):
        fast(x, torch.zeros(1, B, H, dtype=torch.float64))  # 2 layers x 2 directions need 4 initial states
    with pytest.raises(ValueError, match="unknown recurrent mode 'elman'; expected one of"):
        make_recurrent("elman", F, H)
    with pytest.raises(ValueError, match="impl must be 'auto', 'fast' or 'torch', got 'turbo'"):
        make_recurrent("gru", F, H, impl="turbo")


def test_auto_choice() -> None:
    assert not fast_supported("rnn_relu", 100, "cuda", torch.float32)
    assert not fast_supported("rnn_relu", 100, "cpu", torch.bfloat16)
    assert fast_supported("rnn_relu", 100, "cpu", torch.float32) and not fast_supported("rnn_relu", 513)
    assert not fast_supported("lstm", 100, "cpu", torch.float32)
    assert isinstance(make_recurrent("rnn_relu", 28, 100, impl="auto"), FastRecurrent)
    assert type(make_recurrent("lstm", 28, 100, 2, impl="auto")) is nn.LSTM
    assert type(make_recurrent("gru", 28, 100, impl="torch")) is nn.GRU
    assert type(make_recurrent("rnn_tanh", 28, 1024, impl="auto")) is nn.RNN
    assert isinstance(make_recurrent("rnn_tanh", 28, 256, 2, impl="auto"), FastRecurrent)
    assert isinstance(make_recurrent("gru", 28, 100, 2, impl="auto"), FastRecurrent)
    assert isinstance(make_recurrent("gru", 28, 100, bidirectional=True, impl="auto"), FastRecurrent)  # row-best
    assert type(make_recurrent("lstm", 28, 100, bidirectional=True, impl="auto")) is nn.LSTM


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bidir", [False, True])
def test_two_threads(mode: str, bidir: bool) -> None:
    """The loops keep the caller's intra-op threads: same values and gradients with two."""
    ref, fast = _pair(mode, 2, bidir)
    batch = 64
    threads = torch.get_num_threads()
    torch.set_num_threads(2)
    try:
        x = torch.randn(batch, 9, F, dtype=torch.float64)
        n = 2 if mode == "lstm" else 1
        hx = tuple(torch.randn(2 * (2 if bidir else 1), batch, H, dtype=torch.float64)
                   for _ in range(n))
        expected, got = _run(ref, x, hx, mode), _run(fast, x, hx, mode)
        assert torch.get_num_threads() == 2
    finally:
        torch.set_num_threads(threads)
    _assert_same(got, expected)


@pytest.mark.parametrize("mode", MODES)
def test_python_loops_match(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    """Without TorchScript (fast_kernels.SCRIPT off, or compiling failed) the same loops
    run as Python and give the same answer."""
    from rnnlab.models import fast_kernels

    monkeypatch.setattr(fast_kernels, "SCRIPT", False)
    assert not fast_kernels.is_scripted(fast_kernels.compiled(layer_forward))
    ref, fast = _pair(mode, 2, True)
    x = torch.randn(B, 6, F, dtype=torch.float64)
    _assert_same(_run(fast, x, None, mode), _run(ref, x, None, mode))


def test_layers_are_scripted() -> None:
    """Each layer's forward and backward is compiled whole, with the loops it calls."""
    from rnnlab.models import fast_kernels

    for fn in (layer_forward, layer_backward):
        assert fast_kernels.is_scripted(fast_kernels.compiled(fn)), fn.__name__


def test_script_failure_falls_back(monkeypatch: pytest.MonkeyPatch) -> None:
    """If TorchScript cannot compile a loop, a warning says so and Python runs it."""
    from rnnlab.models import fast_kernels

    def broken(fn):  # noqa: ANN001, ANN202
        raise RuntimeError("no TorchScript here")

    monkeypatch.setattr(fast_kernels, "_compiled", {})
    monkeypatch.setattr(torch.jit, "script", broken)
    with pytest.warns(RuntimeWarning, match="TorchScript unavailable"):
        fn = fast_kernels.compiled(layer_forward)
    assert fn is layer_forward
    ref, fast = _pair("gru", 1, False)
    x = torch.randn(B, 5, F, dtype=torch.float64)
    with pytest.warns(RuntimeWarning):
        got = _run(fast, x, None, "gru")
    _assert_same(got, _run(ref, x, None, "gru"))


@pytest.mark.parametrize("mode", MODES)
@pytest.mark.parametrize("bidir", [False, True])
def test_time_major_matches_torch(mode: str, bidir: bool) -> None:
    """batch_first=False: (T, B, F) in and (T, B, D*H) out, as torch.nn's time-major layers."""
    torch.manual_seed(0)
    kinds = {"rnn_relu": nn.RNN, "rnn_tanh": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}
    extra = {"nonlinearity": mode[4:]} if mode.startswith("rnn_") else {}
    ref = kinds[mode](F, H, 2, bidirectional=bidir, **extra).double()
    fast = FastRecurrent(mode, F, H, num_layers=2, bidirectional=bidir, batch_first=False).double()
    fast.load_state_dict(ref.state_dict())
    x = torch.randn(9, B, F, dtype=torch.float64)  # (T, B, F)
    n = 2 if mode == "lstm" else 1
    hx = tuple(torch.randn(2 * (2 if bidir else 1), B, H, dtype=torch.float64) for _ in range(n))
    expected, got = _run(ref, x, hx, mode), _run(fast, x, hx, mode)
    assert got[0].shape == (9, B, (2 if bidir else 1) * H)
    _assert_same(got, expected)


@pytest.mark.parametrize("mode", MODES)
def test_a_constant_initial_state_gets_no_gradient_and_changes_nothing_else(mode: str) -> None:
    """h0 (and c0) given but not requiring grad: the loops skip their gradient; the rest as torch.nn."""
    ref, fast = _pair(mode, 2, False)
    x = torch.randn(B, 9, F, dtype=torch.float64)
    n = 2 if mode == "lstm" else 1
    hx = tuple(torch.randn(2, B, H, dtype=torch.float64) for _ in range(n))  # no requires_grad
    grads = []
    for m in (ref, fast):
        out, _ = m(x, hx if n == 2 else hx[0])
        out.sum().backward()
        grads.append({k: p.grad for k, p in m.named_parameters()})
    assert all(h.grad is None for h in hx)
    for k in grads[0]:
        torch.testing.assert_close(grads[1][k], grads[0][k], rtol=1e-5, atol=1e-8, msg=k)


def test_the_repr_names_the_cell() -> None:
    assert repr(FastRecurrent("gru", 28, 128, num_layers=2)) == "FastRecurrent('gru', 28, 128, num_layers=2, batch_first=True)"
    assert repr(FastRecurrent("rnn_relu", 28, 100)).startswith("FastRecurrent('rnn_relu', 28, 100")


def test_dropout_and_bidirectional_in_torch_nn_order_are_refused_not_swapped() -> None:
    # FastRecurrent and make_recurrent take bidirectional before dropout, torch.nn.RNNBase dropout before
    # bidirectional: given positionally in torch's order, dropout=True once became 1.0 (every activation
    # between layers zeroed) and bidirectional=0.1 a true value (found by QA).
    for build in (FastRecurrent, make_recurrent):
        with pytest.raises(TypeError, match="bidirectional comes before dropout"):
            build("gru", 28, 16, 2, 0.1, True)
        with pytest.raises(TypeError, match="pass them by keyword"):
            build("rnn_tanh", 28, 16, 2, False, True)
    m = FastRecurrent("gru", 28, 16, 2, True, 0.1)  # rnnlab's own order still works
    assert m.bidirectional and m.dropout == 0.1
    assert make_recurrent("gru", 28, 16, num_layers=2, dropout=0.1, bidirectional=True).dropout == 0.1
