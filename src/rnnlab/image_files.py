"""Decoding image files for :mod:`rnnlab.imaging`: any supported format, fully, with clear errors.

A pixel limit guards against decompression bombs; a truncated, empty or non-image file is a
:class:`~rnnlab.errors.DataError` naming the file, never a traceback from PIL.
"""

from __future__ import annotations

import io
import os
import warnings
from pathlib import Path
from typing import Any, BinaryIO

from PIL import Image, ImageOps, UnidentifiedImageError

from rnnlab.errors import DataError

__all__ = ["FORMATS", "MAX_PIXELS", "open_image", "source_name"]

MAX_PIXELS = 25_000_000  # decoded pixels per image; larger images are refused (decompression bombs)
FORMATS = ("PNG", "JPEG", "BMP", "GIF", "WEBP", "TIFF", "PPM")


def source_name(source: Any) -> str:
    """How an error names an image: its path, else just "image"."""
    return str(source) if isinstance(source, (str, os.PathLike)) else "image"


def open_image(source: str | os.PathLike[str] | bytes | BinaryIO, *, max_pixels: int = MAX_PIXELS) -> Image.Image:
    """Decode an image file (path, bytes or binary file) fully, with clear errors for bad input."""
    name = source_name(source)
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        if not path.exists():
            raise DataError(f"{name}: no such file")
        if path.is_dir():  # `rnnlab predict RUN digits/`: the shell expands digits/* into its files
            raise DataError(f"{name}: a folder, not an image file; give the images in it, e.g. "
                            f"{os.path.join(name, '*')}")
        if not path.is_file():  # a FIFO or a device: reading it could block or never end
            raise DataError(f"{name}: not a regular file; give an image file")
        if path.stat().st_size == 0:
            raise DataError(f"{name}: empty file")
        with open(path, "rb") as handle:
            return _decode(handle, name, max_pixels)
    if isinstance(source, (bytes, bytearray, memoryview)):
        if len(source) == 0:
            raise DataError(f"{name}: empty file")
        return _decode(io.BytesIO(bytes(source)), name, max_pixels)
    return _decode(source, name, max_pixels)


def _decode(handle: BinaryIO, name: str, max_pixels: int) -> Image.Image:
    try:
        with warnings.catch_warnings():
            # PIL only warns between its limit and twice it; we want a refusal, never a 1 GB decode.
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(handle, formats=FORMATS)
            width, height = image.size
            if width * height > max_pixels:
                raise DataError(f"{name}: image too large ({width}x{height} = {width * height} pixels; "
                                f"the limit is {max_pixels})")
            if width == 0 or height == 0:
                raise DataError(f"{name}: image has no pixels ({width}x{height})")
            image.load()  # decode now, so a truncated file fails here and the handle can close
            return ImageOps.exif_transpose(image)  # photos: honour the camera's orientation
    except DataError:
        raise
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise DataError(f"{name}: image too large, refused as a possible decompression bomb ({exc})") from None
    except UnidentifiedImageError:
        raise DataError(f"{name}: not an image, or not a supported format "
                        f"({', '.join(FORMATS)})") from None
    except (OSError, SyntaxError, ValueError, EOFError, MemoryError) as exc:
        raise DataError(f"{name}: cannot decode the image ({str(exc).splitlines()[0][:200]})") from None
