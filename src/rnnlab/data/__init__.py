"""Data: strict IDX files, dataset sources and downloads, image-to-sequence views and batching."""

from __future__ import annotations

from rnnlab.data.idx import MAX_IDX_BYTES, IdxError, decompress_idx, parse_idx, read_idx, read_idx_bytes, write_idx
from rnnlab.data.sequences import (
    VIEWS,
    SequenceData,
    images_to_sequences,
    load_sequences,
    make_permutation,
    train_val_split,
    view_shape,
)
from rnnlab.data.sources import (
    DATASETS,
    DatasetSpec,
    cache_dir,
    download,
    embedded_dir,
    find_file,
    get_dataset,
    load_split,
)

__all__ = [
    "DATASETS",
    "MAX_IDX_BYTES",
    "VIEWS",
    "DatasetSpec",
    "IdxError",
    "SequenceData",
    "cache_dir",
    "decompress_idx",
    "download",
    "embedded_dir",
    "find_file",
    "get_dataset",
    "images_to_sequences",
    "load_sequences",
    "load_split",
    "make_permutation",
    "parse_idx",
    "read_idx",
    "read_idx_bytes",
    "train_val_split",
    "view_shape",
    "write_idx",
]
