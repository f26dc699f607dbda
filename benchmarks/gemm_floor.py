"""The GEMM floor: how fast a training step could be if it did nothing but its matrix multiplies.

    python benchmarks/gemm_floor.py             # the five models of train_speed.py
    python benchmarks/gemm_floor.py --hidden 100 --cell rnn --layers 1 --batch 100 --steps 28 --features 28

Every GEMM of one training step of a recurrent classifier (forward and backward through time,
the input projections, the weight gradients, the head), in its own shape, run back to back in one
TorchScript loop with MKL (or whatever BLAS torch uses) and nothing else: no elementwise work, no
data, no update. What that takes is a floor under any implementation that leaves the GEMMs to the
BLAS, and ``train_flops / floor / large-matrix rate`` is the best FLOP efficiency such an
implementation could show here. ``train_speed.py`` measures it beside each model, so that its
targets can be read against what the machine allows.
"""

from __future__ import annotations

import argparse
import time
import warnings
from dataclasses import dataclass

import torch

from rnnlab.models.recurrent import GATES  # gates per cell: rnn 1, gru 3, lstm 4


@dataclass(frozen=True)
class Shape:
    """One model's training step: a stack of recurrent layers and a linear head."""

    cell: str
    hidden: int
    layers: int
    batch: int
    steps: int
    features: int
    classes: int = 10
    directions: int = 1
    head_inputs: int = 0  # the head's input width; 0: hidden x directions (the last step's state)

    def gemms(self) -> list[tuple[tuple[int, int], tuple[int, int], int]]:
        """``((m, k), (k, n), count)`` for every matrix multiply of one training step."""
        B, T, H, G = self.batch, self.steps, self.hidden, GATES[self.cell] * self.hidden
        ops = []
        layer_input = self.features
        for layer in range(self.layers):
            for _ in range(self.directions):
                ops += [((T * B, layer_input), (layer_input, G), 1),  # input projection of all steps
                        ((B, H), (H, G), T),  # the forward recurrence, one step at a time
                        ((B, G), (G, H), T - 1),  # the backward recurrence: dh_(t-1) from dgates_t
                        ((G, T * B), (T * B, layer_input), 1),  # dW_ih over all steps
                        ((G, T * B), (T * B, H), 1)]  # dW_hh over all steps
                if layer > 0:  # the first layer's input needs no gradient
                    ops.append(((T * B, G), (G, layer_input), 1))
            layer_input = H * self.directions
        head_in = self.head_inputs or H * self.directions
        ops += [((B, head_in), (head_in, self.classes), 1),  # logits
                ((self.classes, B), (B, head_in), 1),  # dW_head
                ((B, self.classes), (self.classes, head_in), 1)]  # d(head input)
        return ops

    def train_flops(self) -> int:
        """Training FLOPs of one step: 3x the forward count, as train_speed.py counts them."""
        G = GATES[self.cell] * self.hidden
        forward, layer_input = 0, self.features
        for _ in range(self.layers):
            forward += 2 * G * (layer_input + self.hidden) * self.steps * self.directions
            layer_input = self.hidden * self.directions
        forward += 2 * (self.head_inputs or self.hidden * self.directions) * self.classes
        return 3 * forward * self.batch


def _run_loop(operands: list[tuple[torch.Tensor, torch.Tensor, torch.Tensor]], counts: list[int]) -> None:
    for i in range(len(counts)):
        a, b, out = operands[i]
        for _ in range(counts[i]):
            torch.mm(a, b, out=out)


with warnings.catch_warnings():  # "torch.jit.script is deprecated": the loop needs no Python between GEMMs
    warnings.simplefilter("ignore", DeprecationWarning)
    _run = torch.jit.script(_run_loop)


def _best_time(operands, counts: list[int], repeats: int) -> float:
    for _ in range(3):  # warm-up: TorchScript's profiling runs, MKL's buffers, the pages
        _run(operands, counts)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        _run(operands, counts)
        times.append(time.perf_counter() - start)
    return min(times)  # a floor: the best the machine did, not its typical phase


def floor_seconds(shape: Shape, repeats: int = 20) -> float:
    """Seconds for all the GEMMs of one training step, less the cost of calling as many
    ``1 x 1`` multiplies (TorchScript's dispatch, which a compiled loop would not pay)."""
    ops = shape.gemms()
    operands = [(torch.randn(m, k), torch.randn(k, n), torch.empty(m, n)) for (m, k), (_, n), _ in ops]
    counts = [count for *_, count in ops]
    tiny = [(torch.randn(1, 1), torch.randn(1, 1), torch.empty(1, 1)) for _ in ops]
    return max(_best_time(operands, counts, repeats) - _best_time(tiny, counts, repeats), 1e-9)


def matmul_rate(size: int = 2048, repeats: int = 10) -> float:
    """FLOP/s of a large float32 multiply: the best of several, into a preallocated output (a fresh
    16 MB result each time would measure page faults, not arithmetic)."""
    a, b, c = torch.randn(size, size), torch.randn(size, size), torch.empty(size, size)
    return 2 * size**3 / _best_time([(a, b, c)], [1], repeats)


# The five models of train_speed.py, in its order.
MODELS = {
    "dlw-rnn-a (RNN relu 1x100)": Shape("rnn", 100, 1, 100, 28, 28),
    "dlw-lstm-b (LSTM 2x100)": Shape("lstm", 100, 2, 100, 28, 28),
    "GRU 1x128": Shape("gru", 128, 1, 100, 28, 28),
    "rnn-allsteps (RNN tanh 2x256, batch 64)": Shape("rnn", 256, 2, 64, 28, 28, head_inputs=28 * 256),
    "pixel MNIST, LSTM 1x128 (784 steps)": Shape("lstm", 128, 1, 100, 784, 1),
}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--cell", choices=sorted(GATES), help="one model of these sizes instead of the five")
    parser.add_argument("--hidden", type=int, default=100, help="hidden size")
    parser.add_argument("--layers", type=int, default=1, help="recurrent layers")
    parser.add_argument("--batch", type=int, default=100, help="batch size")
    parser.add_argument("--steps", type=int, default=28, help="time steps")
    parser.add_argument("--features", type=int, default=28, help="input features per step")
    parser.add_argument("--repeats", type=int, default=20, help="timed repeats; the best is kept")
    args = parser.parse_args()
    models = MODELS if args.cell is None else {
        f"{args.cell} {args.layers}x{args.hidden}": Shape(args.cell, args.hidden, args.layers, args.batch,
                                                          args.steps, args.features)}
    rate = matmul_rate()
    print(f"large-matrix rate {rate / 1e9:,.0f} GFLOP/s, {torch.get_num_threads()} threads")
    print("| model | GEMMs alone, ms per step | samples/s at most | FLOP efficiency at most |")
    print("|---|---:|---:|---:|")
    for name, shape in models.items():
        seconds = floor_seconds(shape, args.repeats)
        print(f"| {name} | {seconds * 1e3:.3f} | {shape.batch / seconds:,.0f} "
              f"| {shape.train_flops() / seconds / rate:.0%} |", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
