"""Training and inference throughput: the tutorial pipeline vs plain PyTorch vs rnnlab.

    python benchmarks/train_speed.py            # a few minutes; writes docs/results/train_speed.md
    python benchmarks/train_speed.py --quick    # fewer iterations, for a smoke test
    python benchmarks/train_speed.py --only GRU --pipelines plain,rnnlab --variant torch=model.impl=torch

For each model, in one run and interleaved repeat by repeat (these machines are noisy, so
only ratios measured side by side mean anything):
1. tutorial: a DataLoader over a Dataset that serves one image at a time as torchvision's
   MNIST does (a PIL image, then ``transforms.ToTensor()``), ``torch.nn`` layers, the
   tutorial's loop;
2. plain: the whole data set in memory, batches by index, ``torch.nn`` layers, same optimizer;
   plain-tuned is the same loop after ``rnnlab.allocator.tune_allocator()`` and
   ``rnnlab.denormals.set_flush_denormals(True)``, the two lines that give any loop rnnlab's
   process settings (so the table tells that gain from what rnnlab's layers and loop add);
3. rnnlab: rnnlab's own training loop (``Trainer.train_until``) with its default layers and settings;
4. ceiling: the model's training FLOPs per sample (3x forward, counted analytically)
   against the FLOP rate of a large float32 matrix multiply measured in this run; and the GEMM
   floor (``gemm_floor.py``): the step's GEMMs alone, in their shapes, back to back, which bounds
   every figure an implementation that leaves its GEMMs to the BLAS could reach here.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from typing import Callable
from datetime import date
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn
from torch.utils.data import DataLoader, Dataset

import rnnlab
from rnnlab.config import apply_overrides
from rnnlab.allocator import tune_allocator
from rnnlab.denormals import set_flush_denormals
from rnnlab.distributed import native_bf16_cpu
from rnnlab.data import load_split
from rnnlab.engine import Trainer
from rnnlab.models import flops_per_sample
from rnnlab.models.recurrent import GATES

sys.path.insert(0, str(Path(__file__).resolve().parent))  # gemm_floor.py beside this file, however it is run
from gemm_floor import Shape, floor_seconds, matmul_rate  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Case:
    name: str
    overrides: tuple[str, ...]  # applied to the preset (or to the defaults when preset is "")
    preset: str = ""
    iterations: int = 60  # timed iterations per repeat


def cases(quick: bool) -> list[Case]:
    scale = 4 if quick else 1
    sgd = ("train.optimizer=sgd", "train.lr=0.01", "train.batch_size=100", "train.schedule=none", "train.clip=0",
           "model.init=default", "data.standardize=false")
    return [
        Case("dlw-rnn-a (RNN relu 1x100)", (), preset="dlw-rnn-a", iterations=200 // scale),
        Case("dlw-lstm-b (LSTM 2x100)", (), preset="dlw-lstm-b", iterations=60 // scale),
        Case("GRU 1x128", ("model.cell=gru", "model.hidden=128", *sgd), iterations=100 // scale),
        Case("rnn-allsteps (RNN tanh 2x256, batch 64)", (), preset="rnn-allsteps", iterations=60 // scale),
        Case("pixel MNIST, LSTM 1x128 (784 steps)", ("data.view=pixels", "model.cell=lstm", "model.hidden=128", *sgd),
             iterations=6 // min(scale, 3)),
    ]


def config_for(case: Case) -> rnnlab.RunConfig:
    base = rnnlab.get_preset(case.preset).config if case.preset else rnnlab.RunConfig()
    # No evaluation or checkpoint inside the timed window; the tutorial protocol's test passes are not timed.
    return apply_overrides(base, [*case.overrides, "data.val_size=0", "train.protocol=standard",
                                  "train.eval_every=100000", "train.checkpoint_every=100000",
                                  "train.iterations=100000"])


class ToTensorDataset(Dataset):
    """The tutorials' data path, as ``torchvision.datasets.MNIST(transform=ToTensor())`` runs it
    (without needing torchvision): per image, a PIL image from the uint8 array, then
    ToTensor's conversion to a float tensor (1, 28, 28) in [0, 1]; the label as a Python int."""

    def __init__(self, images: torch.Tensor, labels: torch.Tensor) -> None:
        self.images, self.labels = images, labels

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, int]:
        picture = Image.fromarray(self.images[i].numpy())  # MNIST.__getitem__: a mode "L" image
        array = np.array(picture, np.uint8, copy=True)  # ToTensor.__call__ from here on
        tensor = torch.from_numpy(array).view(picture.size[1], picture.size[0], 1)  # (H, W, C)
        tensor = tensor.permute(2, 0, 1).contiguous()  # (C, H, W)
        return tensor.to(torch.get_default_dtype()).div(255), int(self.labels[i])


class TutorialModel(nn.Module):
    """The tutorials' model: a torch.nn recurrent stack read at the last step (or every step)."""

    def __init__(self, cfg: rnnlab.RunConfig, steps: int, features: int) -> None:
        super().__init__()
        m = cfg.model
        kind = {"rnn": nn.RNN, "lstm": nn.LSTM, "gru": nn.GRU}[m.cell]
        extra = {"nonlinearity": m.nonlinearity} if m.cell == "rnn" else {}
        self.rnn = kind(features, m.hidden, m.layers, batch_first=True, **extra)
        self.all = m.readout == "all"
        self.fc = nn.Linear(m.hidden * (steps if self.all else 1), 10)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out, _ = self.rnn(x)  # (B, T, H)
        return self.fc(out.reshape(len(x), -1) if self.all else out[:, -1])


def optimizer_for(cfg: rnnlab.RunConfig, model: nn.Module) -> torch.optim.Optimizer:
    if cfg.train.optimizer == "adam":
        return torch.optim.Adam(model.parameters(), lr=cfg.train.lr)
    return torch.optim.SGD(model.parameters(), lr=cfg.train.lr)


Timer = Callable[[], float]  # trains the case's iterations, returns samples/s


def _rate(step: Callable[[], None], iterations: int, batch: int) -> Timer:
    def timed() -> float:
        start = time.perf_counter()
        for _ in range(iterations):
            step()
        return iterations * batch / (time.perf_counter() - start)

    for _ in range(3):  # warm-up, once per session
        step()
    return timed


def tutorial_session(cfg, images, labels, steps, features, iterations) -> tuple[Timer, nn.Module]:
    model = TutorialModel(cfg, steps, features)
    opt = optimizer_for(cfg, model)
    loader = DataLoader(ToTensorDataset(images, labels), batch_size=cfg.train.batch_size, shuffle=True)
    batches = iter(loader)

    def step() -> None:
        nonlocal batches
        try:
            x, y = next(batches)
        except StopIteration:  # a new epoch, as the tutorial's loop starts one
            batches = iter(loader)
            x, y = next(batches)
        x = x.view(-1, steps, features).requires_grad_()  # as the tutorials do
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad()
        loss.backward()
        opt.step()

    return _rate(step, iterations, cfg.train.batch_size), model


def plain_session(cfg, seqs, labels, iterations) -> tuple[Timer, nn.Module]:
    steps, features = seqs.shape[1:]
    model = TutorialModel(cfg, steps, features)
    opt = optimizer_for(cfg, model)
    batch = cfg.train.batch_size
    order, count = torch.randperm(len(seqs)), 0

    def step() -> None:
        nonlocal count
        start = (count % (len(seqs) // batch)) * batch
        count += 1
        idx = order[start:start + batch]
        x, y = seqs[idx].float().div_(255), labels[idx]  # (B, T, F)
        loss = F.cross_entropy(model(x), y)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()

    return _rate(step, iterations, batch), model


def rnnlab_session(trainer: Trainer, iterations: int) -> Timer:
    trainer.train_until(trainer.iteration + 3)  # warm-up

    def timed() -> float:
        before_seconds, before_iteration = trainer.train_seconds, trainer.iteration
        trainer.train_until(trainer.iteration + iterations)
        done = trainer.iteration - before_iteration
        return done * trainer.cfg.train.batch_size / (trainer.train_seconds - before_seconds)

    return timed


def step_gemm(batch: int, hidden: int, gates: int, repeats: int = 400) -> float:
    """The FLOP rate of one recurrent step's GEMM, ``(B, H) x (H, G*H)`` accumulated into the
    gate buffer as the layers do it: these small multiplies cannot run at the large-matrix rate,
    and the recurrence has to do them one after another."""
    h, w, out = torch.randn(batch, hidden), torch.randn(hidden, gates * hidden), torch.randn(batch, gates * hidden)
    for _ in range(50):
        out.addmm_(h, w)
    times = []
    for _ in range(5):
        start = time.perf_counter()
        for _ in range(repeats // 5):
            out.addmm_(h, w)
        times.append((time.perf_counter() - start) / (repeats // 5))
    return 2 * batch * hidden * gates * hidden / min(times)


class InferenceTimer:
    """Inference on test sequences without autograd, one repeat per call: samples/s of one
    pass over them in batches, and the median single-image latency in ms. The main process
    calls each pipeline's in turn, repeat by repeat, as it does for training."""

    def __init__(self, model: nn.Module, seqs: torch.Tensor, batch: int = 1000) -> None:
        self.model, self.seqs, self.batch = model, seqs, batch
        self.one = seqs[:1].float() / 255  # (1, T, F)
        model.eval()
        with torch.inference_mode():  # warm-up: the first calls pay one-time set-up costs
            model(seqs[:batch].float() / 255)
            for _ in range(20):
                model(self.one)
        model.train()

    def __call__(self) -> dict:
        model, seqs = self.model, self.seqs
        model.eval()
        with torch.inference_mode():
            start = time.perf_counter()
            for i in range(0, len(seqs), self.batch):
                model(seqs[i:i + self.batch].float() / 255)
            rate = len(seqs) / (time.perf_counter() - start)
            latencies = []
            for _ in range(100):  # single calls take ~1 ms: many, for a stable median
                start = time.perf_counter()
                model(self.one)
                latencies.append(time.perf_counter() - start)
        model.train()
        return {"inference": rate, "latency_ms": 1000 * statistics.median(latencies)}


Session = tuple[Timer, Callable[[], dict], Callable[[], dict]]


def session(case_index: int, pipeline: str, quick: bool, tmp: str) -> Session:
    """Set up one pipeline of one case (warm-up included): a training timer, an inference
    timer (or one that returns nothing), and the closing figures."""
    case = cases(quick)[case_index]
    cfg = config_for(case)
    if pipeline.startswith("rnnlab"):  # "rnnlab" or "rnnlab:KEY=VALUE;KEY=VALUE" (a variant)
        if ":" in pipeline:
            cfg = apply_overrides(cfg, pipeline.split(":", 1)[1].split(";"))
        trainer = Trainer(cfg, Path(tmp), progress=False)
        steps = trainer.data.train.x.shape[1]
        infer = InferenceTimer(trainer.model, trainer.data.test.x[:2000]) if pipeline == "rnnlab" else dict

        def final() -> dict:
            model_cfg = trainer.model.config
            gates = GATES[model_cfg.cell]
            # The GEMMs that must run one step after another: forward and backward through time,
            # per layer and direction (the weight gradients and input projections batch all steps).
            sequential = (2 * model_cfg.layers * trainer.model.directions * steps
                          * 2 * model_cfg.hidden * gates * model_cfg.hidden)
            in_c = trainer.resolved()["backward"] == "by hand, in C"  # the whole step in C (models/native.py)
            return {"impl": type(trainer.model.rnn).__name__ + (", step in C" if in_c else ""),
                    "train_flops": 3 * flops_per_sample(trainer.model, steps), "sequential_flops": sequential,
                    "step_gemm": step_gemm(cfg.train.batch_size, model_cfg.hidden, gates),
                    "gemm_floor_rate": cfg.train.batch_size / floor_seconds(Shape(
                        model_cfg.cell, model_cfg.hidden, model_cfg.layers, cfg.train.batch_size, steps,
                        trainer.model.input_size, trainer.model.num_classes, trainer.model.directions,
                        trainer.model.head.in_features)),
                    # under bf16 autocast, a CPU without bf16 RNN kernels runs the recurrence in fp32
                    "recurrence_fp32": bool(getattr(trainer.model, "recurrent_in_fp32", False))}

        return rnnlab_session(trainer, case.iterations), infer, final
    from rnnlab.data import images_to_sequences

    images, labels = load_split("mnist", "train")
    seqs = images_to_sequences(images, cfg.data.view)  # (N, T, F) uint8
    steps, features = seqs.shape[1:]
    if pipeline == "tutorial":
        timer, _ = tutorial_session(cfg, images, labels, steps, features, case.iterations)
        return timer, dict, dict
    if pipeline == "plain-tuned":
        tune_allocator()  # before the model and its buffers exist, as the Trainer does it
        set_flush_denormals(True)
    timer, model = plain_session(cfg, seqs, labels, case.iterations)
    test_images, _ = load_split("mnist", "test")
    return timer, InferenceTimer(model, images_to_sequences(test_images[:2000], cfg.data.view)), dict


def serve_worker(case_index: int, pipeline: str, quick: bool) -> None:
    """A worker process: set up once, then answer ``time`` (one timed repeat) and ``final`` on
    stdin with one ``RESULT {json}`` line each. Each pipeline keeps its own process, so that it
    runs with only its own settings (rnnlab tunes the allocator for itself; plain PyTorch and
    the tutorial get the defaults), and pays its start-up (imports, data, warm-up) once."""
    with tempfile.TemporaryDirectory() as tmp:
        timed, infer, final = session(case_index, pipeline, quick, tmp)
        print("RESULT {}", flush=True)  # ready
        for command in sys.stdin:
            if command.strip() == "time":
                print("RESULT " + json.dumps({"train": timed()}), flush=True)
            elif command.strip() == "infer":
                print("RESULT " + json.dumps(infer()), flush=True)
            elif command.strip() == "final":
                print("RESULT " + json.dumps(final()), flush=True)
                return


class Worker:
    """The main process's handle on one worker process."""

    def __init__(self, case_index: int, pipeline: str, quick: bool) -> None:
        command = [sys.executable, __file__, "--worker", str(case_index), pipeline] + (["--quick"] * quick)
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        self.read()  # set up and warmed up before the next one starts, so none disturbs a timing

    def read(self) -> dict:
        for line in self.process.stdout:
            if line.startswith("RESULT "):
                return json.loads(line[len("RESULT "):])
        raise RuntimeError(f"benchmark worker {self.process.args[3:5]} exited with {self.process.wait()}")

    def ask(self, command: str) -> dict:
        self.process.stdin.write(command + "\n")
        self.process.stdin.flush()
        return self.read()


BF16 = "rnnlab:train.amp=bf16"


# The targets of issue 4, checked against the run's medians: (model, figure, at least).
TARGETS = (("dlw-rnn-a", "rnnlab / plain", 2.0), ("dlw-rnn-a", "rnnlab / tutorial", 5.0),
           ("dlw-rnn-a", "rnnlab FLOP efficiency", 0.5), ("dlw-lstm-b", "rnnlab / plain", 1.5),
           ("dlw-lstm-b", "rnnlab FLOP efficiency", 0.5))


def target_lines(rows: list[tuple]) -> list[str]:
    """A markdown table: each target, the figure this run measured, whether it holds, and the
    most any implementation could show that leaves its GEMMs to the BLAS (the GEMM floor)."""
    figures: dict[tuple[str, str], tuple[float, float]] = {}
    for name, _, tutorial, plain, rnnlab_rate, *_rest, flop_eff, _step, _ceiling, floor_eff, floor_rate in rows:
        model = name.split(" ")[0]
        figures[model, "rnnlab / plain"] = rnnlab_rate / plain, floor_rate / plain
        figures[model, "rnnlab / tutorial"] = rnnlab_rate / tutorial, floor_rate / tutorial
        figures[model, "rnnlab FLOP efficiency"] = flop_eff, floor_eff
    lines = ["| target | this run | met | at most, GEMMs alone |", "|---|---:|---|---:|"]
    for model, figure, least in TARGETS:
        value, most = figures[model, figure]
        shown = (lambda v: f"{v:.0%}") if "efficiency" in figure else (lambda v: f"{v:.2f}x")
        lines.append(f"| {model}: {figure} >= {shown(least)} | {shown(value)} | {'yes' if value >= least else 'no'} "
                     f"| {shown(most)} |")
    slowest = min(rows, key=lambda r: r[4] / r[3])
    ratio = slowest[4] / slowest[3]
    lines.append(f"| no model slower than plain (median) | {ratio:.2f}x ({slowest[0]}) | {'yes' if ratio >= 1 else 'no'} "
                 "| |")
    return lines


def machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    # The CPU capability oneDNN dispatches to (e.g. AVX2, AVX512_BF16) decides what is fast.
    isa = torch.backends.cpu.get_cpu_capability() if hasattr(torch.backends, "cpu") else "?"
    return (f"{cpu} ({isa}), {torch.get_num_threads()} threads, torch {torch.__version__}, "
            f"Python {platform.python_version()}, {platform.system()}")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--repeats", type=int, default=5, help="interleaved repeats; the median is reported")
    parser.add_argument("--quick", action="store_true", help="fewer iterations (a smoke test, noisy figures)")
    parser.add_argument("--out", default=str(ROOT / "docs" / "results" / "train_speed.md"), help="markdown output")
    parser.add_argument("--only", default="", help="only the models whose name contains this")
    parser.add_argument("--pipelines", default="tutorial,plain,plain-tuned,rnnlab",
                        help="which pipelines; the markdown table needs tutorial, plain and rnnlab")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME=KEY=VALUE[;KEY=VALUE]",
                        help="also time rnnlab with these overrides (repeatable), reported against plain")
    parser.add_argument("--bf16", choices=("auto", "on", "off"), default="auto",
                        help="also time rnnlab under bf16 autocast (train.amp=bf16) on every model; auto: only "
                             "on a CPU with native bf16")
    parser.add_argument("--worker", nargs=2, metavar=("CASE", "PIPELINE"), help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        serve_worker(int(args.worker[0]), args.worker[1], args.quick)
        return 0
    peak = matmul_rate()
    variants = dict(v.split("=", 1) for v in args.variant)
    pipelines = tuple(args.pipelines.split(",")) + tuple(f"rnnlab:{o}" for o in variants.values())
    full = {"tutorial", "plain", "rnnlab"} <= set(pipelines) and not args.only
    with_bf16 = full and (args.bf16 == "on" or (args.bf16 == "auto" and native_bf16_cpu()))
    rows, inference_rows, bf16_rows = [], [], []
    for index, case in enumerate(cases(args.quick)):
        if args.only not in case.name:
            continue
        case_pipelines = pipelines + ((BF16,) if with_bf16 else ())
        results: dict[str, list[dict]] = {p: [] for p in case_pipelines}
        workers = {p: Worker(index, p, args.quick) for p in case_pipelines}
        for _ in range(args.repeats):
            for pipeline in case_pipelines:  # interleaved, so slow phases of a noisy machine hit all alike
                results[pipeline].append(workers[pipeline].ask("time"))
        inference: dict[str, list[dict]] = {p: [] for p in ("rnnlab", "plain") if p in workers}
        for _ in range(args.repeats):  # inference too, interleaved repeat by repeat
            for pipeline in inference:
                inference[pipeline].append(workers[pipeline].ask("infer"))
        for pipeline, handle in workers.items():  # FLOP counts, into the last repeat's row
            results[pipeline][-1].update(handle.ask("final"))
            handle.process.wait()
        med = {p: statistics.median(r["train"] for r in results[p]) for p in case_pipelines}
        if BF16 in med:
            bf16_rows.append((case.name, med["rnnlab"], med[BF16], med[BF16] / med["rnnlab"], med[BF16] / med["plain"],
                              "fp32 (no bf16 kernel here)" if results[BF16][-1]["recurrence_fp32"] else "bf16"))
        if "plain" in med:
            names = {f"rnnlab:{o}": n for n, o in variants.items()}
            plain = [r["train"] for r in results["plain"]]
            print(f"{case.name}: plain {med['plain']:,.0f} samples/s (repeats {min(plain):,.0f}-"
                  f"{max(plain):,.0f}); " + ", ".join(
                      f"{names.get(p, p)} {med[p] / med['plain']:.2f}x (median of the repeats' ratios "
                      f"{statistics.median(r['train'] / q for r, q in zip(results[p], plain)):.2f}x)"
                      for p in pipelines if p != "plain") + " of plain", flush=True)
        if not full:
            continue
        last = results["rnnlab"][-1]
        flops = last["train_flops"]
        # The best any implementation could do here: the sequential step GEMMs at their own measured
        # rate, every other FLOP at the large-matrix rate, and no time for anything else.
        step_rate = last["step_gemm"]
        sequential = min(last["sequential_flops"], flops)
        bound = flops / (sequential / step_rate + (flops - sequential) / peak) / peak
        # Each repeat times the three pipelines back to back: its own ratio is the least disturbed
        # by slow phases of the machine, and their spread says how far to trust the median.
        spread = sorted(r["train"] / q["train"] for r, q in zip(results["rnnlab"], results["plain"]))
        tuned = f"{med['rnnlab'] / med['plain-tuned']:.2f}x" if "plain-tuned" in med else "-"
        floor_rate = last["gemm_floor_rate"]  # samples/s if the step were its GEMMs alone
        rows.append((case.name, last["impl"], med["tutorial"], med["plain"], med["rnnlab"],
                     f"{med['rnnlab'] / med['plain']:.2f}x ({spread[0]:.2f}-{spread[-1]:.2f})", tuned,
                     med["rnnlab"] / med["tutorial"], med["plain"] * flops / peak, med["rnnlab"] * flops / peak,
                     step_rate / peak, bound, floor_rate * flops / peak, floor_rate))
        inference_rows.append((case.name, *(statistics.median(r[k] for r in inference[p])
                                            for p in ("rnnlab", "plain") for k in ("inference", "latency_ms"))))
        print(f"{case.name}: " + ", ".join(f"{k} {v:,.0f}" for k, v in med.items()) + " samples/s", flush=True)
    if not full:
        return 0  # a partial run: the ratios above, no markdown table
    lines = [
        "# Training speed", "",
        f"`python benchmarks/train_speed.py` on {date.today().isoformat()}; {machine()}.",
        f"Float32 matrix-multiply rate measured in the same run: {peak / 1e9:,.1f} GFLOP/s. "
        f"Median of {args.repeats} interleaved repeats, each pipeline in its own process; "
        "samples per second of training (forward, backward, update). FLOP efficiency: training FLOPs "
        "(3x the analytic forward count) per second over the matrix-multiply rate.",
        "",
        "The recurrence forces one small GEMM per step, `(B, H) x (H, gates*H)`, forward and backward. "
        "*Step GEMM* is the rate of that multiply alone, measured in the same run, as a share of the "
        "large-matrix rate. *Ceiling* is the FLOP efficiency of an ideal implementation: those "
        "sequential GEMMs at the step-GEMM rate, every other FLOP at the large-matrix rate, nothing else. "
        "*GEMMs alone* is measured (`benchmarks/gemm_floor.py`): every GEMM of one training step in its own "
        "shape (the projections, both recurrences, the weight gradients, the head), back to back in one "
        "TorchScript loop less its dispatch, and nothing else. It bounds what any implementation that leaves "
        "its GEMMs to the BLAS could reach here, whatever it does with the rest.",
        "",
        "*rnnlab / plain-tuned* compares rnnlab with the plain loop after "
        "`rnnlab.allocator.tune_allocator()` and `rnnlab.denormals.set_flush_denormals(True)`: what "
        "rnnlab's layers and loop give beyond the process settings that any loop can have in two lines.",
        "",
        "| model | rnnlab layers | tutorial | plain torch.nn | rnnlab | rnnlab / plain (range over repeats) "
        "| rnnlab / plain-tuned | rnnlab / tutorial "
        "| plain FLOP eff. | rnnlab FLOP eff. | step GEMM | ceiling | GEMMs alone |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    lines += [f"| {n} | {i} | {t:,.0f} | {p:,.0f} | {r:,.0f} | {rp} | {rpt} | {rt:.1f}x | {pe:.0%} | {re:.0%} "
              f"| {sg:.0%} | {cb:.0%} | {fe:.0%} |"
              for n, i, t, p, r, rp, rpt, rt, pe, re, sg, cb, fe, _ in rows]
    lines += ["", "## The targets (issue 4), as this run measured them", "", *target_lines(rows)]
    lines += ["", "## bfloat16 autocast (rnnlab, float32 weights and optimizer)", ""]
    if bf16_rows:
        lines += [("Native bf16 on this CPU." if native_bf16_cpu() else "**This CPU has no native bf16: the bf16 "
                   "figures below are emulated.**") + " Accuracy under bf16 is a separate question: "
                  "`python benchmarks/bf16_accuracy.py` trains the presets both ways. `train.amp=auto` "
                  "turns bf16 on only where it was measured faster and as accurate.", "",
                  "| model | rnnlab fp32 | rnnlab bf16 | bf16 / fp32 | bf16 / plain fp32 | recurrence ran in |",
                  "|---|---:|---:|---:|---:|---|"]
        lines += [f"| {n} | {a:,.0f} | {b:,.0f} | {r:.2f}x | {q:.2f}x | {how} |" for n, a, b, r, q, how in bf16_rows]
    else:
        lines += ["Not measured: this CPU has no native bf16 (oneDNN needs AVX-512 BF16 or AMX), so bf16 would be "
                  "emulated and slower than float32. `--bf16 on` times it anyway."]
    lines += ["", "## Inference (2,000 test images, batch 1000, no autograd)", "",
              f"Median of {args.repeats} interleaved repeats, each one pass over the images and 100 single-image "
              "calls.",
              "",
              "| model | rnnlab samples/s | plain samples/s | rnnlab latency, 1 image (ms) | plain latency (ms) |",
              "|---|---:|---:|---:|---:|"]
    lines += [f"| {n} | {r:,.0f} | {p:,.0f} | {rl:.2f} | {pl:.2f} |" for n, r, rl, p, pl in inference_rows]
    text = "\n".join(lines) + "\n"
    print("\n" + text)
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    Path(args.out).write_text(text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
