"""MNIST digits drawn again the ways users draw them: coloured, dim, dark on light, on grey paper."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

# kind -> (ink colour, paper colour); a pixel blends the ink over the paper by MNIST's coverage,
# as antialiased drawing does. Grey pairs are written as one-channel images.
KINDS: dict[str, tuple[tuple[int, int, int], tuple[int, int, int]]] = {
    "red on white": ((255, 0, 0), (255, 255, 255)),
    "red on black": ((255, 0, 0), (0, 0, 0)),  # luminance 0.3: dim once grey
    "30% bright": ((77, 77, 77), (0, 0, 0)),
    "90% bright": ((230, 230, 230), (0, 0, 0)),  # just short of full scale
    "black on white": ((0, 0, 0), (255, 255, 255)),
    "on grey paper": ((255, 255, 255), (60, 60, 60)),
}


def redrawn(grey: np.ndarray, kind: str) -> np.ndarray:
    """A light-on-black uint8 digit ``(H, W)`` redrawn as ``kind``: uint8 ``(H, W)`` or ``(H, W, 3)``."""
    ink, paper = (np.array(c, dtype=np.float64) for c in KINDS[kind])
    cover = grey.astype(np.float64)[..., None] / 255  # (H, W, 1)
    rgb = np.round(cover * ink + (1 - cover) * paper).astype(np.uint8)  # (H, W, 3)
    return rgb[..., 0] if _grey(kind) else rgb


def _grey(kind: str) -> bool:
    ink, paper = KINDS[kind]
    return len(set(ink)) == 1 and len(set(paper)) == 1


def png(array: np.ndarray) -> bytes:
    """An array as PNG bytes: a file, as users upload and ``rnnlab predict`` reads."""
    buffer = io.BytesIO()
    Image.fromarray(array).save(buffer, "PNG")
    return buffer.getvalue()


def shifted_diff(a: np.ndarray, b: np.ndarray) -> float:
    """Mean absolute difference (0-255) at the best of the nine one-pixel shifts: MNIST places
    digits in whole pixels, so a centre of mass near a half pixel may round either way."""
    a, b = a.astype(np.int32), b.astype(np.int32)
    return min(float(np.abs(np.roll(a, (dy, dx), (0, 1)) - b).mean()) for dy in (-1, 0, 1) for dx in (-1, 0, 1))
