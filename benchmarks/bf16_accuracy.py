"""Accuracy under bfloat16 autocast against float32, preset by preset.

    python benchmarks/bf16_accuracy.py                                  # dlw-rnn-a-plus, 2 seeds
    python benchmarks/bf16_accuracy.py --presets dlw-lstm-b-plus --seeds 3
    python benchmarks/bf16_accuracy.py --iterations 50                  # a smoke test

bf16 is worth turning on for a preset only if it keeps the accuracy: within 0.3 points of
float32 (the bar of the speed issue). Each preset and seed trains twice, ``train.amp=off`` and
``train.amp=bf16``, same seed, same batches; the table shows both test accuracies, their mean
difference, and the verdict. On a CPU without bf16 RNN kernels rnnlab runs the recurrence in
float32 under bf16 autocast (with a warning); such runs are marked, as they say little about
bf16. Speed is measured by ``train_speed.py --bf16``, side by side with float32.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import warnings
from pathlib import Path

import rnnlab
from rnnlab.config import apply_overrides
from rnnlab.engine import Trainer

BAR = 0.3  # points of test accuracy


def train_once(preset: str, seed: int, amp: str, extra: list[str], folder: Path) -> tuple[float, float, bool]:
    """(test accuracy %, samples/s, recurrence fell back to fp32) of one run."""
    config = apply_overrides(rnnlab.get_preset(preset).config, [f"seed={seed}", f"train.amp={amp}", *extra])
    trainer = Trainer(config, folder / f"{preset}-{seed}-{amp}", progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # the fp32 fallback is reported in the table
        summary = trainer.fit()
    return summary["test_accuracy"], summary["samples_per_second"], trainer.model.recurrent_in_fp32


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    parser.add_argument("--presets", default="dlw-rnn-a-plus", help="comma-separated preset names")
    parser.add_argument("--seeds", type=int, default=2, help="seeds 0..N-1 per preset")
    parser.add_argument("--iterations", type=int, default=0, help="override the budget (0: the preset's)")
    args = parser.parse_args()
    extra = [f"train.iterations={args.iterations}", "train.epochs=0"] if args.iterations else []
    print("| preset | seed | fp32 test % | bf16 test % | bf16 - fp32 | bf16 / fp32 speed | recurrence |")
    print("|---|---:|---:|---:|---:|---:|---|")
    verdicts = []
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets.split(","):
            deltas, fell_back = [], False
            for seed in range(args.seeds):
                fp32, fp32_rate, _ = train_once(preset, seed, "off", extra, Path(tmp))
                bf16, bf16_rate, fallback = train_once(preset, seed, "bf16", extra, Path(tmp))
                fell_back |= fallback
                deltas.append(bf16 - fp32)
                print(f"| {preset} | {seed} | {fp32:.2f} | {bf16:.2f} | {bf16 - fp32:+.2f} "
                      f"| {bf16_rate / fp32_rate:.2f}x "
                      f"| {'fp32 (no bf16 kernel)' if fallback else 'bf16'} |", flush=True)
            mean = statistics.mean(deltas)
            verdict = "within" if abs(mean) <= BAR else "outside"
            note = "; the recurrence ran in fp32, so this says little about bf16" if fell_back else ""
            verdicts.append(f"{preset}: bf16 - fp32 = {mean:+.2f} points on average over {len(deltas)} seeds, "
                            f"{verdict} the {BAR} bar{note}")
    print("\n" + "\n".join(verdicts))
    return 0


if __name__ == "__main__":
    sys.exit(main())
