"""rnnlab.imaging: any digit image -> MNIST form (grey, light on dark, 20x20 box, centred by mass)."""

from __future__ import annotations

import os
import re
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from _drawings import KINDS, png, redrawn, shifted_diff
from rnnlab.data import load_split
from rnnlab.errors import DataError
from rnnlab.imaging import as_image_batch, open_image, prepare, prepare_batch, prepare_image


@pytest.fixture(scope="module")
def mnist_test() -> np.ndarray:
    images, _ = load_split("mnist", "test")
    return images[:50].numpy()  # (50, 28, 28) uint8


def ink_box(pixels: np.ndarray) -> tuple[int, int]:
    rows, cols = np.flatnonzero(pixels.any(1)), np.flatnonzero(pixels.any(0))
    return rows[-1] - rows[0] + 1, cols[-1] - cols[0] + 1


def centre_of_mass(pixels: np.ndarray) -> tuple[float, float]:
    p = pixels.astype(float)
    idx = np.arange(p.shape[0])
    return (p.sum(1) * idx).sum() / p.sum(), (p.sum(0) * idx).sum() / p.sum()


def digit_image(size=(400, 300), ink=(20, 30, 40), paper=(250, 248, 240), width=26) -> Image.Image:
    """A dark "7" on light paper, off-centre and much larger than MNIST."""
    image = Image.new("RGB", size, paper)
    ImageDraw.Draw(image).line([(90, 60), (260, 60), (150, 260)], fill=ink, width=width, joint="curve")
    return image


def test_mnist_arrays_pass_through_unchanged(mnist_test: np.ndarray) -> None:
    for image in mnist_test:
        out = prepare_image(image)
        assert out.dtype == np.uint8 and np.array_equal(out, image)
        assert np.array_equal(prepare_image(image.astype(np.float32) / 255), image)  # float 0-1 too
    assert np.array_equal(prepare_batch(list(mnist_test)), mnist_test)
    assert prepare(mnist_test[0]).passthrough


def test_mnist_images_saved_in_any_grey_form_pass_through(mnist_test: np.ndarray) -> None:
    for image in mnist_test:
        for mode in ("L", "RGB", "RGBA"):  # grey saved as colour (equal channels, opaque) is still grey
            prepared = prepare(png(np.asarray(Image.fromarray(image).convert(mode))))
            assert prepared.passthrough and np.array_equal(prepared.pixels, image), mode
        assert np.array_equal(prepare_image(np.repeat(image[..., None], 3, axis=2)), image)


@pytest.mark.parametrize("kind", KINDS)
def test_a_digit_redrawn_at_mnist_size_is_normalised_to_the_digit(mnist_test: np.ndarray, kind: str) -> None:
    # 28x28 is no reason to use an image as it is: red ink (luminance 0.3), a dim or grey-papered
    # digit once passed through unstretched and was misread. Redrawn, it must come back as MNIST's.
    for image in mnist_test[:20]:
        prepared = prepare(png(redrawn(image, kind)))
        assert not prepared.passthrough and prepared.inverted == (kind.endswith("white"))
        assert prepared.pixels.max() == 255  # ink stretched to full scale
        diff = np.abs(prepared.pixels.astype(int) - image.astype(int))
        assert diff.max() <= 12 and diff.mean() < 0.5, (kind, diff.max(), diff.mean())


@pytest.mark.parametrize("kind", KINDS)
def test_a_digit_redrawn_at_twice_the_size_is_normalised_as_the_grey_one(mnist_test: np.ndarray, kind: str) -> None:
    for image in mnist_test[:20]:
        big = np.asarray(Image.fromarray(image).resize((56, 56), Image.Resampling.BICUBIC))  # light on black
        want = prepare(png(big)).pixels
        got = prepare(png(redrawn(big, kind))).pixels
        # Equal up to a one-pixel shift and one source pixel of crop: dim ink has fewer grey levels,
        # which moves the faintest halo across the cropping threshold. Unstretched would be ~25.
        assert shifted_diff(got, want) < 8, kind


def test_batch_shaped_arrays_are_left_alone(mnist_test: np.ndarray) -> None:
    assert as_image_batch(mnist_test) is mnist_test  # the TrainedModel fast path
    tensor = torch.from_numpy(mnist_test)
    assert as_image_batch(tensor) is tensor


def test_inverted_render_is_restored(mnist_test: np.ndarray) -> None:
    # Inverting, cropping, scaling and centring again lands where MNIST put the digit: the only
    # differences are the contrast stretch (254 -> 255) and the faintest edge pixels (< 4%).
    for image in mnist_test[:20]:
        prepared = prepare(255 - image)
        assert prepared.inverted and not prepared.passthrough
        diff = np.abs(prepared.pixels.astype(int) - image.astype(int))
        assert diff.max() <= 12 and diff.mean() < 0.5
        cy, cx = centre_of_mass(prepared.pixels)
        assert abs(cy - 14) <= 0.5 and abs(cx - 14) <= 0.5


def test_large_colour_dark_on_light_photo() -> None:
    prepared = prepare(digit_image())
    pixels = prepared.pixels
    assert prepared.inverted
    assert pixels.shape == (28, 28) and pixels.dtype == np.uint8
    assert max(ink_box(pixels)) == 20  # fits the 20x20 box exactly
    cy, cx = centre_of_mass(pixels)
    assert abs(cy - 14) <= 0.5 and abs(cx - 14) <= 0.5
    assert pixels[0].max() == 0 and pixels[:, 0].max() == 0  # black background
    assert pixels.max() >= 200  # ink stretched to (nearly) full brightness


def test_light_on_dark_is_not_inverted_and_aspect_ratio_is_kept() -> None:
    image = Image.new("L", (200, 500), 0)
    ImageDraw.Draw(image).rectangle([80, 50, 119, 449], fill=255)  # a bar 40 wide, 400 tall
    prepared = prepare(image)
    assert not prepared.inverted
    height, width = ink_box(prepared.pixels)
    assert height == 20 and width in (2, 3)  # 40/400 * 20 = 2, plus antialiasing


def test_transparent_drawing_black_strokes(tmp_path: Path) -> None:
    image = Image.new("RGBA", (280, 280), (0, 0, 0, 0))  # canvas "nothing" is transparent black
    ImageDraw.Draw(image).line([(140, 40), (140, 240)], fill=(0, 0, 0, 255), width=20)
    path = tmp_path / "drawing.png"
    image.save(path)
    pixels = prepare_image(path)
    assert max(ink_box(pixels)) == 20 and pixels.max() == 255  # the stroke is the ink, not the background


def test_sixteen_bit_grey_and_jpeg_bmp(tmp_path: Path, mnist_test: np.ndarray) -> None:
    wide = (mnist_test[0].astype(np.uint16) * 257)  # 16-bit, same picture
    Image.fromarray(wide).save(tmp_path / "deep.png")
    assert np.array_equal(prepare_image(tmp_path / "deep.png"), mnist_test[0])
    for suffix in ("jpg", "bmp", "gif", "webp"):
        digit_image().save(tmp_path / f"d.{suffix}")
        assert max(ink_box(prepare_image(tmp_path / f"d.{suffix}"))) == 20


def test_geometry_maps_rows_back_onto_the_source() -> None:
    prepared = prepare(digit_image())  # the 7's ink spans y = 47..273 in the source
    rows = prepared.source_rows()
    ink_rows = np.flatnonzero(prepared.pixels.any(1))
    top, bottom = rows[ink_rows[0]][0], rows[ink_rows[-1]][1]
    assert 35 <= top <= 60 and 255 <= bottom <= 290
    assert prepared.source_size == (300, 400)


def test_huge_image_is_reduced_first() -> None:
    big = digit_image().resize((4000, 3000))
    prepared = prepare(big)
    assert max(ink_box(prepared.pixels)) == 20 and prepared.source_size == (3000, 4000)
    small = prepare(digit_image())
    assert np.abs(prepared.pixels.astype(int) - small.pixels.astype(int)).mean() < 8


def bomb_png(width: int, height: int) -> bytes:
    """A valid-looking PNG header claiming ``width x height`` pixels, with almost no data."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        chunk(b"IEND", b"")


@pytest.mark.parametrize("content, message", [
    (b"", "empty file"),
    (b"hello, I am text", "not an image"),
    (bomb_png(60_000, 60_000), "too large"),  # PIL's own DecompressionBombError territory
    (bomb_png(6000, 5000), "too large"),  # under PIL's limit, over ours
    (Image.new("L", (1, 1)).tobytes(), "not an image"),
])
def test_bad_files_raise_clear_errors(tmp_path: Path, content: bytes, message: str) -> None:
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(DataError, match=message):
        prepare_image(path)
    with pytest.raises(DataError, match=message):
        prepare_image(content)  # bytes, as the server passes them


def test_truncated_missing_and_blank(tmp_path: Path) -> None:
    digit_image().save(tmp_path / "ok.png")
    (tmp_path / "cut.png").write_bytes((tmp_path / "ok.png").read_bytes()[:400])
    with pytest.raises(DataError, match="cannot decode"):
        open_image(tmp_path / "cut.png")
    with pytest.raises(DataError, match="no such file"):
        prepare_image(tmp_path / "missing.png")
    Image.new("RGB", (100, 80), (255, 255, 255)).save(tmp_path / "white.png")
    with pytest.raises(DataError, match="no digit"):
        prepare_image(tmp_path / "white.png")
    Image.new("L", (28, 28), 0).save(tmp_path / "black28.png")  # MNIST's size is no reason to guess
    with pytest.raises(DataError, match=r"black28\.png: no digit found"):
        prepare_image(tmp_path / "black28.png")


def test_a_folder_or_a_fifo_says_what_to_give_instead(tmp_path: Path) -> None:
    folder = tmp_path / "digits"
    folder.mkdir()
    with pytest.raises(DataError, match=rf"^{re.escape(str(folder))}: a folder, not an image file; give the "
                                        rf"images in it, e.g. {re.escape(str(folder / '*'))}$"):
        prepare_image(folder)
    if hasattr(os, "mkfifo"):
        os.mkfifo(tmp_path / "pipe")
        with pytest.raises(DataError, match="pipe: not a regular file; give an image file"):
            prepare_image(tmp_path / "pipe")


@pytest.mark.parametrize("side", [28, 40])
def test_a_float_image_with_nan_is_refused(tmp_path: Path, side: int) -> None:
    values = np.asarray(digit_image().convert("L").resize((side, side)), np.float32) / 255  # (side, side)
    values[0, 0] = np.nan
    Image.fromarray(values, "F").save(tmp_path / "nan.tif")
    with pytest.raises(DataError, match=r"nan\.tif: the image holds NaN or infinite values; fill or drop them$"):
        prepare_image(tmp_path / "nan.tif")


@pytest.mark.parametrize("kind", ["16-bit", "float"])
def test_a_huge_sixteen_bit_or_float_image_is_reduced_in_its_own_range(kind: str) -> None:
    grey = np.asarray(digit_image().convert("L").resize((2200, 2100)), np.float64) / 255  # (2100, 2200), dark ink
    values = (20000 + 40000 * grey).astype(np.uint16) if kind == "16-bit" else grey.astype(np.float32)
    prepared = prepare(Image.fromarray(values), max_pixels=10**7)  # 8-bit RGB would clip it to blank
    eight_bit = prepare(Image.fromarray(np.round(grey * 255).astype(np.uint8)), max_pixels=10**7)
    assert prepared.source_size == (2100, 2200) and max(ink_box(prepared.pixels)) == 20
    assert np.abs(prepared.pixels.astype(int) - eight_bit.pixels.astype(int)).mean() < 2


def test_bad_arrays() -> None:
    with pytest.raises(DataError, match="must be"):
        prepare_image(np.zeros((5, 5, 7)))
    with pytest.raises(DataError, match=">= 0"):
        prepare_image(np.full((28, 28), -1.0))


def test_flattened_complex_and_object_arrays_are_refused(mnist_test: np.ndarray) -> None:
    with pytest.raises(DataError, match=r"images of shape \(5, 784\) look flattened; reshape them to \(N, 28, 28\)"):
        as_image_batch(mnist_test[:5].reshape(5, 784))
    with pytest.raises(DataError, match=r"\(16, 784, 1\) look like pixel-view sequences .* x.reshape\(-1, 28, 28\)"):
        as_image_batch(mnist_test[:16].reshape(16, 784, 1) / 255.0)  # not one 16 x 784 grey picture
    with pytest.raises(DataError, match=r"shape \(784,\) looks flattened; reshape it: x.reshape\(28, 28\)"):
        prepare_batch(list(mnist_test[:2].reshape(2, 784)))
    with pytest.raises(DataError, match="must hold real numbers .* got complex64"):
        prepare_image(np.ones((30, 20), np.complex64))
    with pytest.raises(DataError, match="must hold real numbers .* got object"):
        prepare_image(np.array([[None, 1]], dtype=object))
    assert prepare_image(np.array(digit_image().convert("L"))).shape == (28, 28)  # a (300, 400) photo still works


def test_pixel_batch_reads_integers_as_pixels(mnist_test: np.ndarray) -> None:
    from rnnlab.imaging import pixel_batch

    images = mnist_test[:3]
    assert np.array_equal(pixel_batch(images.astype(np.int32)), images)
    assert np.array_equal(pixel_batch(images.tolist()), images)
    assert np.array_equal(pixel_batch(images[0]), images[:1])
    floats = pixel_batch(images / 255.0 + 0.001 * (images < 255))  # floats are kept as given, not rounded
    assert floats.dtype == np.float32 and np.allclose(floats, images / 255.0 + 0.001 * (images < 255), atol=1e-7)
    # 0-255 floats read as a larger image or the web API reads them: the same rule at every size
    assert np.allclose(pixel_batch(images.astype(np.float64)), images / 255.0, atol=1e-7)
    # ... image by image: a 0-255 image beside a 0-1 one changes neither
    mixed = pixel_batch([images[0] / 255.0, images[1].astype(np.float32)])
    assert np.allclose(mixed, images[:2] / 255.0, atol=1e-7)
    with pytest.raises(DataError, match=r"float images must have values 0-1 \(or 0-255\), got 0 to 256"):
        pixel_batch(images.astype(np.float32) + (images == 255))
    with pytest.raises(DataError, match="got -1 to 255"):
        pixel_batch(images.astype(np.int16) - (images == 0))


def test_an_open_image_file_is_read_and_left_usable(tmp_path: Path) -> None:
    """A file object has a ``detach`` too: taken for a tensor, it took the caller's stream apart."""
    import io

    from rnnlab.imaging import pixel_batch

    path = tmp_path / "digit.png"
    Image.fromarray((np.arange(28 * 28) % 256).astype(np.uint8).reshape(28, 28)).save(path)
    expected = pixel_batch(str(path))
    with open(path, "rb") as handle:
        assert np.array_equal(pixel_batch(handle), expected)
        handle.seek(0)
        assert handle.read(4) == b"\x89PNG"  # still the caller's, still readable
    assert np.array_equal(pixel_batch(io.BytesIO(path.read_bytes())), expected)
    assert np.array_equal(pixel_batch(torch.from_numpy(expected.copy())), expected)  # tensors as before


def test_a_bfloat16_tensor_of_images_is_read() -> None:
    from rnnlab.imaging import pixel_batch

    images = torch.rand(2, 28, 28)
    assert np.array_equal(pixel_batch(images.bfloat16()), pixel_batch(images.bfloat16().float()))
