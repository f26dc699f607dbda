"""Micro-benchmark: one training step of FastRecurrent vs torch.nn, side by side.

A step is forward + cross-entropy on a Linear readout of the last step + backward +
SGD step. Implementations are interleaved (torch, fast, torch, fast, ...) so that
noise from other processes hits both alike; the table shows the median over
repeats of the mean step time within a repeat, the speed-up (torch / fast), and the
FLOP rate as a fraction of a large float32 matmul measured in the same run; the
last column compares the best (minimum) repeats, the least disturbed by other load.

    .venv/bin/python benchmarks/layer_speed.py [--reps 7] [--only lstm] [--threads 2]
    .venv/bin/python benchmarks/layer_speed.py --variants torch,fast,fast-python

Variants of the fast path (``--variants``, each against torch): ``fast`` (the defaults: each
layer's forward and backward compiled with TorchScript, with the caller's threads) and
``fast-python`` (the same code as plain Python). The loops on one intra-op thread, a variant
until the 14th session, lost (benchmarks/README.md) and can no longer be swapped in alone.
"""

from __future__ import annotations

import argparse
import os
import statistics
import time
from dataclasses import dataclass

import torch
from torch import nn

from rnnlab.models import fast_kernels
from rnnlab.models.fast import make_recurrent

# name -> fast_kernels.SCRIPT: the layers compiled with TorchScript, or run as plain Python
VARIANTS = {"fast": True, "fast-python": False}


@dataclass
class Config:
    name: str
    mode: str
    layers: int
    hidden: int
    batch: int = 100
    steps: int = 28
    features: int = 28
    iters: int = 10  # timed steps per repeat

    def flops(self) -> float:
        """Training FLOPs per step: ~3x forward; forward per sample and step is
        gates * 2H(I+H) per layer (gates 1/3/4 for RNN/GRU/LSTM)."""
        gates = {"lstm": 4, "gru": 3}.get(self.mode, 1)
        fwd, i = 0, self.features
        for _ in range(self.layers):
            fwd += gates * 2 * self.hidden * (i + self.hidden)
            i = self.hidden
        return 3.0 * fwd * self.steps * self.batch


CONFIGS = [
    Config("rnn_relu 1x100 (dlw-rnn-a)", "rnn_relu", 1, 100),
    Config("lstm 2x100 (dlw-lstm-b)", "lstm", 2, 100),
    Config("gru 1x128", "gru", 1, 128),
    Config("rnn_tanh 2x256 b64", "rnn_tanh", 2, 256, batch=64),
    Config("lstm 1x128 784x1", "lstm", 1, 128, steps=784, features=1, iters=2),
    # The edges of fast.py's choice table: the largest sizes it picks the fast path for,
    # and pixel MNIST (784 steps of 1 feature) with the cells that take it.
    Config("rnn_tanh 1x512 b64", "rnn_tanh", 1, 512, batch=64),
    Config("gru 1x256", "gru", 1, 256),
    Config("rnn_relu 1x128 784x1", "rnn_relu", 1, 128, steps=784, features=1, iters=2),
    Config("gru 1x128 784x1", "gru", 1, 128, steps=784, features=1, iters=2),
]


class Classifier(nn.Module):
    def __init__(self, rnn: nn.Module, hidden: int) -> None:
        super().__init__()
        self.rnn, self.head = rnn, nn.Linear(hidden, 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)  # (B, T, H)
        return self.head(out[:, -1])


def matmul_gflops(n: int = 2048, reps: int = 10) -> float:
    a, b = torch.randn(n, n), torch.randn(n, n)
    for _ in range(3):
        a @ b
    t = time.perf_counter()
    for _ in range(reps):
        a @ b
    return 2 * n**3 * reps / (time.perf_counter() - t) / 1e9


def bench(cfg: Config, reps: int, clock=time.perf_counter,
          variants: tuple[str, ...] = ("torch", "fast")) -> dict[str, float]:
    torch.manual_seed(0)
    x = torch.rand(cfg.batch, cfg.steps, cfg.features)
    y = torch.randint(0, 10, (cfg.batch,))
    models, opts = {}, {}
    for impl in variants:
        torch.manual_seed(0)
        m = Classifier(make_recurrent(cfg.mode, cfg.features, cfg.hidden, cfg.layers,
                                      impl="torch" if impl == "torch" else "fast"), cfg.hidden)
        models[impl], opts[impl] = m, torch.optim.SGD(m.parameters(), lr=0.01)

    def step(impl: str) -> None:
        if impl != "torch":
            fast_kernels.SCRIPT = VARIANTS[impl]
        loss = nn.functional.cross_entropy(models[impl](x), y)
        opts[impl].zero_grad(set_to_none=True)
        loss.backward()
        opts[impl].step()

    for impl in models:  # warm-up
        step(impl)
        step(impl)
    times: dict[str, list[float]] = {k: [] for k in models}
    for _ in range(reps):
        for impl in models:
            t = clock()
            for _ in range(cfg.iters):
                step(impl)
            times[impl].append((clock() - t) / cfg.iters)
    return {**{k: statistics.median(v) * 1e3 for k, v in times.items()},
            **{k + "_min": min(v) * 1e3 for k, v in times.items()}}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--reps", type=int, default=7)
    ap.add_argument("--only", default="", help="substring of config names to run")
    ap.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: keep)")
    ap.add_argument("--variants", default="torch,fast",
                    help="comma-separated: torch and any of " + ", ".join(VARIANTS))
    ap.add_argument("--tune-allocator", action="store_true",
                    help="glibc malloc tuning as rnnlab's Trainer applies it (both sides)")
    ap.add_argument("--cpu-time", action="store_true",
                    help="time process CPU instead of wall clock: robust to other load, "
                         "but only comparable with --threads 1 (2 threads count spin-waits)")
    args = ap.parse_args()
    clock = time.process_time if args.cpu_time else time.perf_counter
    variants = tuple(args.variants.split(","))
    if variants[0] != "torch" or any(v not in VARIANTS for v in variants[1:]):
        ap.error(f"--variants: torch first, then any of {', '.join(VARIANTS)}")
    if args.tune_allocator:
        from rnnlab.allocator import tune_allocator

        tune_allocator()
    if args.threads:
        torch.set_num_threads(args.threads)
    peak = matmul_gflops()
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, "
          f"large fp32 matmul {peak:.0f} GFLOP/s, {'CPU' if args.cpu_time else 'wall'} time, "
          f"load average {os.getloadavg()[0]:.1f}")
    print(f"{'config':30s} {'variant':12s} {'torch ms':>9s} {'ms':>9s} {'speed-up':>9s} "
          f"{'torch eff':>9s} {'eff':>9s} {'best-of speed-up':>17s}")
    for cfg in CONFIGS:
        if args.only not in cfg.name:
            continue
        r = bench(cfg, args.reps, clock, variants)
        eff = {k: cfg.flops() / (r[k] / 1e3) / 1e9 / peak for k in variants}
        for v in variants[1:]:
            print(f"{cfg.name:30s} {v:12s} {r['torch']:9.2f} {r[v]:9.2f} "
                  f"{r['torch'] / r[v]:8.2f}x {eff['torch']:8.0%} {eff[v]:8.0%} "
                  f"{r['torch_min']:.2f}/{r[v + '_min']:.2f} {r['torch_min'] / r[v + '_min']:.2f}x",
                  flush=True)


if __name__ == "__main__":
    main()
