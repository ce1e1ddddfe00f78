"""A prepared dataset's content fingerprint: one hash over its decoded examples, in order.

It is independent of the file layout (shard count, array_record or tfrecord, zlib's output,
TFDS's serialisation): what is hashed is each example as a reader receives it, feature by
feature in sorted order, as name, dtype, shape and bytes (little-endian). Two machines that
prepared the same data agree on it; `scripts/prepare_data.py --verify` recomputes it, each
builder records it in its dataset info (`metadata['fingerprint']`) and every run copies it
into run_info.json. docs/data.md publishes those of the built-in configs.
"""
from __future__ import annotations

import hashlib
import os
from collections.abc import Iterable, Mapping
from typing import Any

import numpy as np

KEY = "fingerprint"


def _update(h, name: str, value: Any) -> None:
    h.update(name.encode() + b"\0")
    if isinstance(value, (bytes, str)):
        data = value.encode("utf-8") if isinstance(value, str) else value
        h.update(b"bytes\0" + len(data).to_bytes(8, "little") + data)
        return
    a = np.asarray(value)
    if a.dtype == object:  # e.g. a string tensor
        for item in a.reshape(-1):
            _update(h, "", item)
        return
    a = np.ascontiguousarray(a, dtype=a.dtype.newbyteorder("<"))
    h.update(f"{a.dtype.str}{a.shape}\0".encode() + a.tobytes())


def digest(examples: Iterable[Mapping[str, Any]]) -> tuple[str, int]:
    """(sha256 hex of the examples in order, their count)."""
    h, count = hashlib.sha256(), 0
    for example in examples:
        for name in sorted(example):
            _update(h, name, example[name])
        count += 1
    return h.hexdigest(), count


def combine(per_split: Mapping[str, str]) -> str:
    """One hash of the split hashes (sorted by split name)."""
    h = hashlib.sha256()
    for split in sorted(per_split):
        h.update(f"{split}={per_split[split]}\n".encode())
    return h.hexdigest()


def of_sources(sources: Mapping[str, Any]) -> dict[str, str]:
    """{split: hash, 'all': hash} of random-access sources (`len`, `[i]`)."""
    out = {split: digest(src[i] for i in range(len(src)))[0] for split, src in sorted(sources.items())}
    return {**out, "all": combine(out)}


def _records(info, split_info) -> Iterable[Mapping[str, Any]]:
    from array_record.python import array_record_module  # pylint: disable=import-outside-toplevel

    for path in split_info.filepaths:
        reader = array_record_module.ArrayRecordReader(os.fspath(path))
        try:
            for record in reader.read_all():
                yield info.features.deserialize_example_np(record)
        finally:
            reader.close()


def record(info) -> dict[str, str]:
    """Computes the fingerprint of a dataset just written as array_record (inside a builder's
    `_download_and_prepare`, before any tfrecord copy) and stores it in `info.metadata`."""
    per_split = {name: digest(_records(info, s))[0] for name, s in sorted(info.splits.items())}
    value = {**per_split, "all": combine(per_split)}
    info.metadata[KEY] = value
    return value


def of_builder(builder) -> dict[str, str]:
    """Recomputes a prepared dataset's fingerprint from what a reader gets (`--verify`)."""
    return of_sources({split: builder.as_data_source(split=split) for split in builder.info.splits})


def recorded(builder) -> dict[str, str] | None:
    """The fingerprint stored at preparation (None for a dataset prepared before fingerprints)."""
    value = builder.info.metadata.get(KEY) if builder.info.metadata is not None else None
    return dict(value) if value else None
