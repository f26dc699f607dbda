"""How a prediction evolves as the model reads: class probabilities after chosen steps.

Shared by ``rnnlab predict --steps`` and the web server. For a one-directional model with readout
``last`` or ``mean`` every step is exact and costs one pass; otherwise each point is a separate
pass over a prefix, so long sequences (784 pixels) are sampled at a few points (row ends).
"""

from __future__ import annotations

from typing import Any

import torch


def sample_points(steps: int, max_points: int | None) -> list[int]:
    """Step counts ``1..steps`` to report: all of them, or ``max_points`` evenly spaced, ending at ``steps``."""
    if max_points is None or steps <= max_points:
        return list(range(1, steps + 1))
    return [round(steps * k / max_points) for k in range(1, max_points + 1)]


@torch.no_grad()
def reading_steps(trained: Any, images: Any, *, max_points: int | None = None,
                  cheap_max_points: int | None = None) -> tuple[list[int], torch.Tensor]:
    """``(points, probabilities (N, P, C))``: probabilities after reading ``points[i]`` steps.

    ``max_points`` bounds the points when each costs a pass; ``cheap_max_points`` when all steps
    come in one pass (``None``: every step).
    """
    model = trained.model
    model.eval()
    x = trained.to_sequences(images)  # (N, T, F) float in [0, 1]
    steps = x.shape[1]
    if model.directions == 1 and model.config.readout in ("last", "mean"):
        points = sample_points(steps, cheap_max_points)
        logits = model.step_logits(x)  # (N, T, C), exact and one pass
        return points, torch.softmax(logits[:, [p - 1 for p in points]], dim=-1)
    points = sample_points(steps, max_points)
    out = []
    for t in points:
        prefix = x[:, :t]  # (N, t, F)
        if model.config.readout == "all":
            # Unread steps are blank pixels, as in SequenceClassifier.step_logits.
            prefix = torch.cat([prefix, x.new_zeros(x.shape[0], steps - t, x.shape[2])], dim=1)
        out.append(model(prefix))
    return points, torch.softmax(torch.stack(out, dim=1), dim=-1)  # (N, P, C)
