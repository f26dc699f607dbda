"""The known IDX datasets: their files, checksums and mirrors, and how their files may be named.

Split out of ``sources`` (which re-exports the public names) so that locating, verifying and
downloading files stays in one module of reasonable size.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from rnnlab.errors import ConfigError

__all__ = ["DATASETS", "DatasetSpec", "candidates", "find_in", "get_dataset", "known_file", "split_files"]

_STD_FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


@dataclass(frozen=True)
class DatasetSpec:
    """Static description of an IDX image-classification dataset."""

    name: str
    files: dict[str, tuple[str, str]]  # split -> (images base name, labels base name)
    sha256: dict[str, str]  # base name -> sha256 of the *decompressed* bytes; may be empty
    mirrors: tuple[str, ...]
    num_classes: int = 10
    image_shape: tuple[int, int] = (28, 28)
    class_names: tuple[str, ...] | None = None  # None: the digits are their own names


DATASETS: dict[str, DatasetSpec] = {
    "mnist": DatasetSpec(
        name="mnist",
        files=_STD_FILES,
        sha256={
            "train-images-idx3-ubyte": "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
            "train-labels-idx1-ubyte": "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
            "t10k-images-idx3-ubyte": "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
            "t10k-labels-idx1-ubyte": "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        },
        mirrors=(
            "https://ossci-datasets.s3.amazonaws.com/mnist/",
            "http://yann.lecun.com/exdb/mnist/",
        ),
    ),
    # We do not ship sums for these two: they are checked structurally (valid IDX, sizes, labels).
    "fashion-mnist": DatasetSpec(
        name="fashion-mnist",
        files=_STD_FILES,
        sha256={},
        mirrors=(
            "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
            "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/",
        ),
        class_names=("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat", "Sandal", "Shirt", "Sneaker", "Bag",
                     "Ankle boot"),
    ),
    "kmnist": DatasetSpec(
        name="kmnist",
        files=_STD_FILES,
        sha256={},
        mirrors=("http://codh.rois.ac.jp/kmnist/dataset/kmnist/",),
        # kmnist_classmap.csv: the ten hiragana, romanised
        class_names=("o", "ki", "su", "tsu", "na", "ha", "ma", "ya", "re", "wo"),
    ),
}


def get_dataset(dataset: str | DatasetSpec) -> DatasetSpec:
    """Look a dataset up by name (a ``DatasetSpec`` is passed through)."""
    if isinstance(dataset, DatasetSpec):
        return dataset
    try:
        return DATASETS[dataset]
    except KeyError:
        valid = ", ".join(DATASETS)
        raise ConfigError(f"unknown dataset {dataset!r}; valid names are: {valid}.") from None


def split_files(spec: DatasetSpec, split: str) -> tuple[str, str]:
    """The (images, labels) base names of one split."""
    try:
        return spec.files[split]
    except KeyError:
        valid = ", ".join(spec.files)
        raise ConfigError(f"unknown split {split!r} for {spec.name}; valid splits are: {valid}.") from None


def known_file(spec: DatasetSpec, sha256: str) -> tuple[str, str] | None:
    """``(base name, "test labels")`` of the dataset file whose known checksum is ``sha256``.

    A file that fails its checksum but matches another file of the dataset was put in the wrong
    place; naming which file it is tells the user exactly what to fix.
    """
    for split, names in spec.files.items():
        for base, kind in zip(names, ("images", "labels")):
            if spec.sha256.get(base) == sha256:
                return base, f"{split} {kind}"
    return None


def other_datasets_file(spec: DatasetSpec, sha256: str) -> str | None:
    """``"mnist's train images"`` where ``sha256`` is a known file of another dataset: Fashion-MNIST
    and KMNIST use MNIST's file names, and we have no sums of their own to tell them apart by."""
    for other in DATASETS.values():
        found = known_file(other, sha256) if other.name != spec.name else None
        if found is not None:
            return f"{other.name}'s {found[1]}"
    return None


def candidates(base: str) -> list[str]:
    """The file names ``base`` may have on disk."""
    # Both spellings are in the wild: "train-images-idx3-ubyte" and "train-images.idx3-ubyte".
    names = [base]
    alt = base.replace("-idx", ".idx", 1)
    if alt != base:
        names.append(alt)
    return [n + ext for n in names for ext in ("", ".gz")]


def find_in(directory: Path, base: str) -> Path | None:
    """The first of ``candidates(base)`` that is a file in ``directory``, or None."""
    for name in candidates(base):
        p = directory / name
        if p.is_file():
            return p
    return None
