"""Bringing any digit image to MNIST's form, the way MNIST itself was made.

MNIST digits are grey, light ink on a black background, scaled (antialiased, aspect ratio
kept) so the ink fits a 20x20 box, then placed in a 28x28 field so that the centre of mass of
the ink sits at the centre. :func:`prepare_image` does the same to a photo, a scan or a drawing:

1. decode (PNG, JPEG, BMP, ...: :mod:`rnnlab.image_files`) and make it grey; transparent
   pixels are laid on a background that contrasts with the ink;
2. invert when the background is light (decided from the median of the border pixels);
3. subtract the background level, stretch the ink to full contrast, drop border-level noise;
4. crop to the ink, scale to fit 20x20, place by centre of mass (at pixel (14, 14), where
   MNIST's mean centre of mass lies).

An image that is already in MNIST form -- 28x28, stored grey, full-scale light ink on a black
background, as every MNIST image is (see :func:`_in_mnist_form`) -- passes through
unchanged (no re-centring), so predicting on MNIST's own images equals evaluating them directly.
Any other 28x28 image (coloured, dim, on grey or light) goes through steps 2-4 like any other size.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from typing import Any, Sequence

import numpy as np
from PIL import Image

from rnnlab.errors import DataError, describe
from rnnlab.image_files import FORMATS, MAX_PIXELS, open_image
from rnnlab.image_files import source_name as _name

__all__ = ["FORMATS", "MAX_PIXELS", "Prepared", "as_image_batch", "open_image", "pixel_batch", "prepare",
           "prepare_batch", "prepare_image", "to_grey"]

SIZE = 28  # MNIST's field
BOX = 20  # MNIST's digits are scaled to fit this box
CENTRE = 14.0  # MNIST's mean centre of mass, in pixel-index coordinates (13.99, 14.01 on the test set)
WORKING_SIDE = 1024  # larger images are box-reduced first: plenty for a 20-pixel digit, and cheap
MIN_CONTRAST = 0.08  # ink must differ from the background by this much (of full scale), else "blank"
BBOX_LEVEL = 0.04  # a faint halo (blur, upscaling) does not count towards the 20x20 box
# MNIST form, as measured on every MNIST and Fashion-MNIST image (train and test): the brightest
# pixel is 254 or 255, and the border ring has pixels at 0 (an item touching it can lift its median).
FULL_INK = 250 / 255  # the ink of an image in MNIST form reaches this
BLACK = 8 / 255  # ... and the darkest tenth of its border is at most this
RESAMPLE = Image.Resampling.LANCZOS  # antialiased: PIL widens the kernel when shrinking

ImageSource = Any  # a path, bytes, a binary file, a PIL image, or an array (H, W) / (H, W, 3|4)


@dataclass(frozen=True)
class Prepared:
    """An image in MNIST form and where its pixels came from.

    Pixel ``(r, c)`` of ``pixels`` covers the source rectangle starting at
    ``origin + (r, c) / scale`` (source pixel coordinates, ``(y, x)``), ``1 / scale`` wide.
    """

    pixels: np.ndarray  # uint8 (28, 28), light ink on black
    source_size: tuple[int, int]  # (H, W) of the decoded source
    scale: tuple[float, float]  # (sy, sx): 28x28 pixels per source pixel
    origin: tuple[float, float]  # (y, x) in the source of the 28x28 field's top-left corner
    inverted: bool  # the source was dark on light
    passthrough: bool  # the source was already in MNIST form and is returned unchanged

    def source_rows(self) -> list[tuple[float, float]]:
        """For each of the 28 rows, its ``(top, bottom)`` in source pixel coordinates."""
        sy, oy = self.scale[0], self.origin[0]
        return [(oy + r / sy, oy + (r + 1) / sy) for r in range(SIZE)]


def _luminance(rgb: np.ndarray) -> np.ndarray:
    """ITU-R 601 luma, as PIL's ``convert("L")``: ``(..., 3)`` -> ``(...)``."""
    return rgb[..., 0] * 0.299 + rgb[..., 1] * 0.587 + rgb[..., 2] * 0.114


def _is_wide(image: Image.Image) -> bool:
    """A 16-bit, 32-bit integer or float image: values past 255 that an 8-bit mode would clip."""
    return image.mode in ("I", "F") or image.mode.startswith("I;16")


def to_grey(image: Image.Image, name: str = "image") -> np.ndarray:
    """A PIL image as float32 grey ``(H, W)`` in [0, 1], transparency flattened."""
    if _is_wide(image):
        values = np.asarray(image, dtype=np.float64)
        if not np.isfinite(values).all():  # a float TIFF can hold them; min/max and scaling would spread NaN
            raise DataError(f"{name}: the image holds NaN or infinite values; fill or drop them")
        top = 65535.0 if values.max(initial=0) > 255 else (1.0 if image.mode == "F" and values.max(initial=0) <= 1
                                                          else 255.0)
        return np.clip(values / top, 0, 1).astype(np.float32)
    has_alpha = "A" in image.mode or "a" in image.mode or "transparency" in image.info
    if not has_alpha:
        return np.asarray(image.convert("L"), dtype=np.float32) / 255.0
    rgba = np.asarray(image.convert("RGBA"), dtype=np.float32) / 255.0  # (H, W, 4)
    grey, alpha = _luminance(rgba[..., :3]), rgba[..., 3]
    if alpha.min() >= 1.0:
        return grey
    # A drawing on a transparent canvas: the ink is whatever is opaque, whatever its colour
    # (often black on "nothing"). Lay it on the background that contrasts with the ink.
    covered = float(alpha.sum())
    ink_level = float((grey * alpha).sum() / covered) if covered > 0 else 0.0
    background = 1.0 if ink_level < 0.5 else 0.0
    return alpha * grey + (1.0 - alpha) * background


def _array_to_grey(array: np.ndarray) -> tuple[np.ndarray, bool]:
    """An array ``(H, W)``, ``(H, W, 1)`` or ``(H, W, 3|4)`` (uint8, or float 0-1 / 0-255) -> float grey,
    and whether that grey is the array's own values (see :func:`_is_grey_image`)."""
    if array.ndim == 3 and array.shape[2] == 1:
        array = array[..., 0]
    if array.shape == (SIZE * SIZE,):
        raise DataError(f"an image array of shape {array.shape} looks flattened; reshape it: x.reshape({SIZE}, {SIZE})")
    if array.dtype.kind not in "biuf":  # complex, strings, Python objects
        raise DataError(f"an image array must hold real numbers (uint8, or float 0-1 / 0-255), got {array.dtype}")
    if array.ndim not in (2, 3) or (array.ndim == 3 and array.shape[2] not in (3, 4)):
        raise DataError(f"an image array must be (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), got {array.shape}")
    if array.size == 0:
        raise DataError(f"image array is empty: {array.shape}")
    if array.dtype.kind in "iu":  # integers are pixels 0-255 at any size, as in pixel_batch
        values = integer_pixels(array).astype(np.float32) / 255.0
    elif array.dtype == np.bool_:
        values = array.astype(np.float32)
    else:
        values = unit_floats(array.astype(np.float32)[None])[0]  # one image as a batch of one
    if values.ndim == 2:
        return values, True
    # Only looked at for MNIST's size (see _source_to_grey): a large array need not be compared.
    grey_source = values.shape[:2] == (SIZE, SIZE) and _channels_equal(values[..., :3]) and (
        values.shape[2] == 3 or bool((values[..., 3] >= 1).all()))
    if values.shape[2] == 4:  # go through PIL so transparency is handled in one place
        return to_grey(Image.fromarray(np.round(values * 255).astype(np.uint8), "RGBA")), grey_source
    return _luminance(values), grey_source


def _channels_equal(rgb: np.ndarray) -> bool:
    """``(H, W, 3)``: a grey picture stored as colour."""
    return bool((rgb[..., 0] == rgb[..., 1]).all() and (rgb[..., 1] == rgb[..., 2]).all())


def _is_grey_image(image: Image.Image) -> bool:
    """One grey channel (or equal colour channels) and nothing transparent: its grey is its own pixels.

    A colour image's grey is its luminance, in which red ink at full strength is dark grey (0.3):
    never MNIST form as it is, however the picture looks.
    """
    if _is_wide(image) or (image.mode in ("1", "L") and "transparency" not in image.info):
        return True
    rgba = np.asarray(image.convert("RGBA"))  # (H, W, 4) uint8; palettes and tRNS keys applied
    return _channels_equal(rgba[..., :3]) and bool((rgba[..., 3] == 255).all())


def _border(grey: np.ndarray) -> np.ndarray:
    """The outermost ring of pixels ``(K,)``: what a digit's background looks like."""
    return np.concatenate([grey[0], grey[-1], grey[1:-1, 0], grey[1:-1, -1]])


def _source_to_grey(obj: ImageSource, max_pixels: int) -> tuple[np.ndarray, float, tuple[int, int], bool]:
    """Grey ``(H, W)`` float, the box-reduction factor applied to large images, the source's ``(H, W)``,
    and whether the source is grey itself (only looked at for MNIST's size: the rest is prepared anyway)."""
    if isinstance(obj, Image.Image):
        if obj.width * obj.height > max_pixels:
            raise DataError(f"image too large ({obj.width}x{obj.height}; the limit is {max_pixels} pixels)")
        image = obj
    elif isinstance(obj, (str, os.PathLike, bytes, bytearray, memoryview)) or hasattr(obj, "read"):
        image = open_image(obj, max_pixels=max_pixels)
    else:
        array = np.asarray(obj)
        if array.size > max_pixels * 4:
            raise DataError(f"image array too large ({array.shape}; the limit is {max_pixels} pixels)")
        grey, grey_source = _array_to_grey(array)
        return grey, 1.0, grey.shape, grey_source
    factor, size = 1, (image.height, image.width)
    if max(image.size) > 2 * WORKING_SIDE:
        factor = math.ceil(max(image.size) / WORKING_SIDE)
        if _is_wide(image):  # reduced in its own range: RGB would clip 16-bit and float values to 0-255
            image = image.convert("I") if image.mode.startswith("I;16") else image
        else:
            image = image.convert("RGBA" if "A" in image.mode or "transparency" in image.info else "RGB")
        image = image.reduce(factor)  # box filter: antialiased, and it bounds the memory below
    grey_source = size == (SIZE, SIZE) and _is_grey_image(image)
    return to_grey(image, _name(obj)), float(factor), size, grey_source


def _in_mnist_form(grey: np.ndarray, grey_source: bool, inverted: bool) -> bool:
    """Whether an image already is what every MNIST image is, so that it is used bit for bit.

    28x28, grey in the source itself (a colour image's luminance is not MNIST's grey), light on
    dark, the background black (the darkest tenth of the border ring; an item may touch the rest)
    and the ink at full scale. A 28x28 image that misses any of these -- red ink, a dim or
    washed-out scan, a grey background -- is normalised like any other size. Placement (20x20
    box, centre of mass) is not checked: Fashion-MNIST places its images its own way (filling the
    28x28 field), and they pass as they are, as all of MNIST's do (all but 2 of its 70,000, light
    across most of the border, so taken for dark on light, as they always were).
    """
    return (grey.shape == (SIZE, SIZE) and grey_source and not inverted
            and float(np.percentile(_border(grey), 10)) <= BLACK and float(grey.max()) >= FULL_INK)


def prepare(obj: ImageSource, *, max_pixels: int = MAX_PIXELS) -> Prepared:
    """Bring one image to MNIST form, with the geometry that maps it back onto the source."""
    grey, factor, source_size, grey_source = _source_to_grey(obj, max_pixels)  # (H, W) float in [0, 1]
    border = _border(grey)
    inverted = bool(np.median(border) > 0.5)
    ink = 1.0 - grey if inverted else grey.copy()
    background = float(np.median(_border(ink)))
    ink = np.clip(ink - background, 0.0, None)
    peak = float(ink.max())
    if peak < MIN_CONTRAST:  # a blank image, at MNIST's size too: no answer is better than a guess
        raise DataError(f"{_name(obj)}: no digit found (the image is blank or has almost no contrast)")
    if _in_mnist_form(grey, grey_source, inverted):
        # Keep it bit for bit (a uint8 array round-trips exactly); anything else is stretched below.
        pixels = np.round(grey * 255.0).astype(np.uint8)
        return Prepared(pixels, source_size, (1.0, 1.0), (0.0, 0.0), False, True)
    ink /= peak
    # Paper texture, JPEG noise and shadows at the border level are not ink. The 90th percentile
    # ignores ink that touches the border; the cap keeps faint real ink from being wiped out.
    floor = min(max(3.0 * float(np.percentile(_border(ink), 90)), 0.02), 0.5)
    ink[ink <= floor] = 0.0
    solid = ink > BBOX_LEVEL
    rows, cols = np.flatnonzero(solid.any(axis=1)), np.flatnonzero(solid.any(axis=0))
    top, bottom, left, right = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    crop = ink[top:bottom, left:right]  # (h, w)
    h, w = crop.shape
    fit = BOX / max(h, w)
    new_h, new_w = max(1, round(h * fit)), max(1, round(w * fit))
    patch = Image.fromarray(crop.astype(np.float32), "F").resize((new_w, new_h), RESAMPLE)
    patch = np.clip(np.asarray(patch, dtype=np.float32), 0.0, 1.0)  # Lanczos rings slightly past [0, 1]
    mass = float(patch.sum())
    if mass <= 0:
        raise DataError(f"{_name(obj)}: no digit found (the ink vanished when scaled down)")
    cy = float((patch.sum(axis=1) * np.arange(new_h)).sum() / mass)
    cx = float((patch.sum(axis=0) * np.arange(new_w)).sum() / mass)
    # Whole-pixel placement, as MNIST did, kept inside the field.
    py = int(min(max(round(CENTRE - cy), 0), SIZE - new_h))
    px = int(min(max(round(CENTRE - cx), 0), SIZE - new_w))
    field = np.zeros((SIZE, SIZE), dtype=np.float32)
    field[py:py + new_h, px:px + new_w] = patch
    pixels = np.round(field * 255.0).astype(np.uint8)
    sy, sx = new_h / (h * factor), new_w / (w * factor)  # field pixels per source pixel
    origin = (top * factor - py / sy, left * factor - px / sx)
    return Prepared(pixels, source_size, (sy, sx), origin, inverted, False)


def prepare_image(obj: ImageSource, *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """One image (path, bytes, PIL image or array) -> uint8 ``(28, 28)`` in MNIST form."""
    return prepare(obj, max_pixels=max_pixels).pixels


def prepare_batch(objs: Sequence[ImageSource], *, max_pixels: int = MAX_PIXELS) -> np.ndarray:
    """Several images -> uint8 ``(N, 28, 28)``; the first bad one raises :class:`DataError`."""
    if isinstance(objs, (str, os.PathLike, bytes, Image.Image)):
        objs = [objs]
    images = [prepare_image(obj, max_pixels=max_pixels) for obj in objs]
    return np.stack(images) if images else np.zeros((0, SIZE, SIZE), dtype=np.uint8)


def _is_single_source(obj: Any) -> bool:
    return isinstance(obj, (str, os.PathLike, bytes, bytearray, Image.Image)) or hasattr(obj, "read")


def as_image_batch(images: Any, image_shape: tuple[int, int] = (SIZE, SIZE)) -> Any:
    """What :class:`rnnlab.TrainedModel` accepts, made into a batch of MNIST-form images.

    Arrays (or nested lists) shaped ``(N, H, W)`` or ``(H, W)`` with the dataset's image shape
    are returned as they are: they are taken to be in MNIST form already. Paths, bytes, PIL
    images, arrays of other shapes, and lists of any of these are prepared (uint8 ``(N, 28, 28)``).
    """
    if _is_single_source(images):
        return prepare_batch([images])
    if isinstance(images, (list, tuple)) and images and any(
            _is_single_source(item) or (hasattr(item, "shape") and tuple(item.shape) != tuple(image_shape))
            for item in images):
        return prepare_batch(list(images))
    if hasattr(images, "shape"):
        shape = tuple(images.shape)
        height, width = image_shape
        if len(shape) == 2 and shape[1] == height * width:  # more likely N flattened images than one picture
            raise DataError(f"images of shape {shape} look flattened; reshape them to (N, {height}, {width}): "
                            f"x.reshape(-1, {height}, {width}) (one picture {shape[1]} pixels wide: pass "
                            "Image.fromarray(x))")
        if len(shape) == 3 and shape[1:] == (height * width, 1):  # the pixel view's (N, T, F) sequences
            raise DataError(f"images of shape {shape} look like pixel-view sequences (N, {height * width}, 1); "
                            f"give images (N, {height}, {width}): x.reshape(-1, {height}, {width})")
        if (len(shape) == 2 and shape != tuple(image_shape)) or (
                len(shape) == 3 and shape[1:] != tuple(image_shape) and shape[2] in (1, 3, 4)):
            return prepare_batch([images])  # one image of another size, or one colour image
    return images


def _is_tensor(obj: Any) -> bool:
    """A torch tensor, told apart without importing torch; not a file object, whose ``detach``
    would take the caller's stream apart."""
    return hasattr(obj, "detach") and hasattr(obj, "cpu") and not hasattr(obj, "read")


def _as_array(images: Any, accepted: str) -> np.ndarray:
    try:
        if _is_tensor(images):  # on a GPU, or needing grad, numpy cannot read it
            images = images.detach().cpu()
            if str(images.dtype) == "torch.bfloat16":  # numpy has no bfloat16
                images = images.float()
        return np.asarray(images)
    except (TypeError, ValueError, RuntimeError, NotImplementedError) as exc:  # ragged lists, meta tensors
        line = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        raise DataError(f"images cannot be read as one array ({line}); {accepted}") from None


def pixel_batch(images: Any, image_shape: tuple[int, int] = (SIZE, SIZE)) -> np.ndarray:
    """What :meth:`rnnlab.TrainedModel.predict` accepts -> pixels ``(N, H, W)``: uint8, or float32
    in [0, 1] for float input, not rounded (rounding them to 8 bits would move predictions away
    from what an exported model computes on the same floats).

    Brought to MNIST form by :func:`as_image_batch`, then checked, so that no input becomes a
    silently wrong prediction: uint8 and integers 0-255 are pixels; floats are 0-1, or 0-255 if
    any is above 1, the rule of every image path (``prepare``, the web API); bool is ink (True) on
    black; anything else raises :class:`DataError` saying what to pass.
    """
    height, width = image_shape
    accepted = (f"give an array or tensor (N, {height}, {width}) or ({height}, {width}) of pixels (uint8 or "
                "integers 0-255, or floats 0-1 or 0-255), PIL images, image files (paths or bytes), or a list of these")
    if _is_tensor(images):
        images = _as_array(images, accepted)
    if isinstance(images, (list, tuple)):
        if not images:
            raise DataError("no images given (an empty list); pass at least one image")
        for index, item in enumerate(images):
            if not (_is_single_source(item) or hasattr(item, "shape") or
                    isinstance(item, (list, tuple, int, float, np.number))):
                raise DataError(f"images[{index}] is {describe(item)}, not an image; {accepted}")
        if not any(_is_single_source(item) or hasattr(item, "shape") for item in images):
            images = _as_array(images, accepted)  # nested lists of numbers: checked as the array they make
    array = _as_array(as_image_batch(images, image_shape), accepted)
    if array.dtype.kind not in "biufc" or array.ndim == 0:
        raise DataError(f"images must be pixel arrays or image files, not {describe(images)}; {accepted}")
    if array.shape[0] == 0:  # an empty batch would predict nothing and succeed
        raise DataError(f"no images given (shape {array.shape}); pass at least one image")
    if array.shape == (height * width,):
        raise DataError(f"an image of shape {array.shape} looks flattened; reshape it: x.reshape({height}, {width})")
    if array.ndim == 2:
        array = array[None]  # one image (H, W) -> (1, H, W)
    if array.ndim != 3 or array.shape[1:] != (height, width):
        raise DataError(f"images must have shape (N, {height}, {width}) or ({height}, {width}), got {array.shape}; "
                        "prepare them with rnnlab.imaging or pass image files")
    kind = array.dtype.kind
    if kind == "c":
        raise DataError(f"images must hold real pixel values, not {array.dtype}; pass uint8 or integers 0-255, "
                        "or floats in [0, 1]")
    if kind == "b":
        return array.astype(np.uint8) * np.uint8(255)  # ink on black, as prepare_image reads a bool image
    if kind in "iu":
        return integer_pixels(array)
    return unit_floats(array.astype(np.float32))


def integer_pixels(values: np.ndarray) -> np.ndarray:
    """Integer pixels of any integer type (e.g. from ``.tolist()`` or int64 arithmetic) -> uint8,
    refusing values outside 0-255 rather than wrapping them."""
    low, high = int(values.min()), int(values.max())
    if low < 0 or high > 255:
        raise DataError(f"integer images must have values 0-255 (pixels, as uint8), got {low} to {high}; "
                        "scale them to 0-255, or pass floats in [0, 1]")
    return values.astype(np.uint8)


def unit_floats(values: np.ndarray) -> np.ndarray:
    """Float pixels ``(N, ...)`` -> [0, 1], image by image: 0-1 as given, 0-255 (an image with a
    value above 1) divided by 255, so a 0-255 image beside a 0-1 one changes neither. The one rule
    of every image path (arrays, files, the web API)."""
    if not np.isfinite(values).all():  # NaN passes a min/max check and would read as black
        raise DataError("images hold NaN or infinite values; fill or drop them")
    low, high = float(values.min()), float(values.max())
    if low < 0 or high > 255:
        raise DataError(f"float images must have values 0-1 (or 0-255), got {low:g} to {high:g}: each must be "
                        ">= 0 and at most 255; scale them to [0, 1], or pass uint8 for 0-255")
    peaks = values.reshape(len(values), -1).max(axis=1)  # (N,)
    scale = np.where(peaks > 1, np.float32(255.0), np.float32(1.0))  # (N,)
    return values / scale.reshape(-1, *([1] * (values.ndim - 1)))  # (N, 1, ...) broadcast over each image
