"""Raw AV-MNIST sources: where they are, whether they are intact, and how to read them.

The builder (`avmnist.py`) only ever sees a `SourcePaths`; this module decides where the files
come from (one rule, `resolve_manual_dir`), checks them against the sha256 table committed in
`checksums/sources.tsv`, and decodes MNIST idx files and FSDD wavs with strict, named errors.
Nothing here downloads unless `download_sources` is handed TFDS's download manager.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import re
import struct
from collections.abc import Iterable, Mapping
from pathlib import Path

import numpy as np

ENV_VAR = "CROSSMODAL_MANUAL_DIR"
CHECKSUMS_DIR = Path(__file__).resolve().parent / "checksums"
SOURCES_TABLE = CHECKSUMS_DIR / "sources.tsv"
URLS_TABLE = CHECKSUMS_DIR / "urls.tsv"  # TFDS checksums format, used by the download manager

MNIST_URL = "https://storage.googleapis.com/cvdf-datasets/mnist/"
FSDD_VERSION = "1.0.10"
FSDD_URL = (
    "https://github.com/Jakobovski/free-spoken-digit-dataset/archive/refs/tags/"
    f"v{FSDD_VERSION}.tar.gz"
)
MNIST_FILES = {
    "train_images": "train-images-idx3-ubyte.gz",
    "train_labels": "train-labels-idx1-ubyte.gz",
    "test_images": "t10k-images-idx3-ubyte.gz",
    "test_labels": "t10k-labels-idx1-ubyte.gz",
}
MNIST_SUBDIR = "mnist"
RECORDINGS_SUBDIR = "fsdd/recordings"
SAMPLE_RATE = 8000
AUDIO_ID_RE = re.compile(r"^(?P<digit>[0-9])_(?P<speaker>[a-z]+)_(?P<index>[0-9]+)$")

LAYOUT_HELP = (
    "Expected layout: <dir>/mnist/{train,t10k}-{images-idx3,labels-idx1}-ubyte.gz and "
    "<dir>/fsdd/recordings/{digit}_{speaker}_{index}.wav (FSDD v1.0.10). Pass manual_dir=..., "
    f"set ${ENV_VAR}, or see docs/data.md."
)


class SourceError(ValueError):
    """A raw source file or directory is missing, corrupt or in the wrong format."""


@dataclasses.dataclass(frozen=True)
class SourcePaths:
    """Resolved raw files: the four MNIST .gz files and the FSDD wavs by audio id."""

    mnist: Mapping[str, Path]  # keys of MNIST_FILES
    recordings: Mapping[str, Path]  # audio id ('3_jackson_12') -> wav path
    origin: str  # human-readable: where they came from


# ----------------------------------------------------------------------------- location


def default_shared_dir() -> Path:
    """`<repo root>/../shared/data`: where the raw sources live on the team machines."""
    return Path(__file__).resolve().parents[2].parent / "shared" / "data"


def resolve_manual_dir(manual_dir: str | os.PathLike | None = None) -> Path | None:
    """Decides the source directory: explicit > $CROSSMODAL_MANUAL_DIR > shared dir > None.

    None means "no local copy: download". An explicitly named directory (argument or env var)
    that does not exist is an error rather than a silent fallback to another copy.
    """
    if manual_dir is not None:
        path = Path(manual_dir).expanduser()
        if not path.is_dir():
            raise SourceError(f"manual_dir {path} does not exist or is not a directory. {LAYOUT_HELP}")
        return path
    env = os.environ.get(ENV_VAR)
    if env:
        path = Path(env).expanduser()
        if not path.is_dir():
            raise SourceError(f"${ENV_VAR}={env} does not exist or is not a directory. {LAYOUT_HELP}")
        return path
    shared = default_shared_dir()
    return shared if shared.is_dir() else None


# ----------------------------------------------------------------------------- checksums


def load_checksum_table(path: Path = SOURCES_TABLE) -> dict[str, tuple[int, str]]:
    """Reads `relative/path<TAB>size<TAB>sha256` lines into {relative path: (size, sha256)}."""
    table = {}
    for line in path.read_text().splitlines():
        if line.strip() and not line.startswith("#"):
            rel, size, digest = line.split("\t")
            table[rel] = (int(size), digest)
    return table


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def verify_files(files: Mapping[str, Path], table: Mapping[str, tuple[int, str]], where: str,
                 dataset: str = "AV-MNIST", origin: str | None = None) -> None:
    """Checks size and sha256 of each file against the table; one error listing every bad file.

    `origin` says where intact copies come from (AV-MNIST: the MNIST idx files, FSDD v1.0.10).
    """
    bad = []
    for rel, path in sorted(files.items()):
        size, digest = table[rel]
        actual_size = path.stat().st_size
        if actual_size != size:
            bad.append(f"{path}: {actual_size} bytes, expected {size} (truncated or a different file)")
        elif (actual := sha256_file(path)) != digest:
            bad.append(f"{path}: sha256 {actual}, expected {digest}")
    if bad:
        origin = origin or f"MNIST from the original idx files, FSDD from release v{FSDD_VERSION}"
        raise SourceError(
            f"{len(bad)} corrupt {dataset} source file(s) in {where}:\n  "
            + "\n  ".join(first_items(bad))
            + f"\nReplace them with intact copies ({origin}); to build from deliberately "
            "modified sources pass verify_checksums=False."
        )


def first_items(items: list[str], n: int = 10) -> list[str]:
    return items[:n] + ([f"... and {len(items) - n} more"] if len(items) > n else [])


# ----------------------------------------------------------------------------- locating


def locate_manual_sources(manual_dir: str | os.PathLike, *, verify_checksums: bool = True) -> SourcePaths:
    """Finds the sources in a directory laid out like ../shared/data and checks them.

    With `verify_checksums` the recordings are exactly those of the committed table (FSDD
    v1.0.10); without it every `{digit}_{speaker}_{index}.wav` in fsdd/recordings is used.
    """
    root = Path(manual_dir)
    table = load_checksum_table()
    mnist = {key: root / MNIST_SUBDIR / name for key, name in MNIST_FILES.items()}
    rec_dir = root / RECORDINGS_SUBDIR
    if verify_checksums:
        recordings = {
            Path(rel).stem: root / rel for rel in table if rel.startswith(RECORDINGS_SUBDIR + "/")
        }
    else:
        recordings = _scan_recordings(rec_dir) if rec_dir.is_dir() else {}
    missing = [str(p) for p in mnist.values() if not p.is_file()]
    if rec_dir.is_dir():
        missing += [str(p) for p in recordings.values() if not p.is_file()]
    else:
        missing.append(f"{rec_dir}/ (directory with the 3000 FSDD v{FSDD_VERSION} wavs)")
    if missing:
        raise SourceError(
            f"AV-MNIST sources incomplete in {root}: {len(missing)} missing:\n  "
            + "\n  ".join(first_items(missing))
            + f"\n{LAYOUT_HELP}"
        )
    if verify_checksums:
        files = {f"{MNIST_SUBDIR}/{name}": mnist[key] for key, name in MNIST_FILES.items()}
        files.update({f"{RECORDINGS_SUBDIR}/{aid}.wav": p for aid, p in recordings.items()})
        verify_files(files, table, str(root))
    return SourcePaths(mnist=mnist, recordings=recordings, origin=str(root))


def _scan_recordings(rec_dir: Path) -> dict[str, Path]:
    recordings = {}
    for path in sorted(rec_dir.glob("*.wav")):
        parse_audio_id(path.stem, path)  # raises on names that do not follow the convention
        recordings[path.stem] = path
    return recordings


def download_sources(dl_manager, *, verify_checksums: bool = True) -> SourcePaths:
    """Fetches MNIST (sha256-checked by TFDS from checksums/urls.tsv) and the FSDD archive.

    The FSDD archive hash is not known in advance, so each extracted wav is checked against
    the per-file table instead (when `verify_checksums`).
    """
    mnist = dl_manager.download({key: MNIST_URL + name for key, name in MNIST_FILES.items()})
    mnist = {key: Path(os.fspath(p)) for key, p in mnist.items()}
    extracted = Path(os.fspath(dl_manager.download_and_extract(FSDD_URL)))
    candidates = sorted(p for p in extracted.glob("*/recordings") if p.is_dir())
    candidates += [extracted / "recordings"] if (extracted / "recordings").is_dir() else []
    if not candidates:
        raise SourceError(f"No recordings/ directory in the extracted FSDD archive {extracted} ({FSDD_URL}).")
    recordings = _scan_recordings(candidates[0])
    table = load_checksum_table()
    if verify_checksums:
        expected = {Path(rel).stem for rel in table if rel.startswith(RECORDINGS_SUBDIR + "/")}
        missing = sorted(expected - set(recordings))
        if missing:
            raise SourceError(
                f"FSDD archive {FSDD_URL} extracted to {candidates[0]} lacks {len(missing)} "
                f"recording(s): {', '.join(first_items(missing))}"
            )
        recordings = {aid: recordings[aid] for aid in sorted(expected)}
        files = {f"{MNIST_SUBDIR}/{name}": mnist[key] for key, name in MNIST_FILES.items()}
        files.update({f"{RECORDINGS_SUBDIR}/{aid}.wav": p for aid, p in recordings.items()})
        verify_files(files, table, "the TFDS download directory")
    return SourcePaths(mnist=mnist, recordings=recordings, origin=f"downloaded ({MNIST_URL}, {FSDD_URL})")


# ----------------------------------------------------------------------------- decoding


def read_idx(path: Path, *, expected_magic: int) -> np.ndarray:
    """Decodes a gzipped MNIST idx file (big-endian header, uint8 payload)."""
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError) as e:
        raise SourceError(f"{path} is not a readable gzip file ({e}); re-copy the MNIST .gz file.") from e
    if len(data) < 8:
        raise SourceError(f"{path}: too short for an idx header ({len(data)} bytes).")
    magic, n = struct.unpack(">II", data[:8])
    if magic != expected_magic:
        raise SourceError(f"{path}: idx magic {magic:#x}, expected {expected_magic:#x} (wrong file?).")
    ndim = magic & 0xFF
    dims = struct.unpack(f">{ndim}I", data[4 : 4 + 4 * ndim])
    offset = 4 + 4 * ndim
    expected = int(np.prod(dims))
    if len(data) - offset != expected:
        raise SourceError(f"{path}: {len(data) - offset} payload bytes, header says {dims} = {expected}.")
    return np.frombuffer(data, dtype=np.uint8, offset=offset).reshape(dims)


def load_mnist(paths: Mapping[str, Path]) -> dict[str, np.ndarray]:
    """Returns {'train_images' [60000,28,28], 'train_labels', 'test_images', 'test_labels'} uint8."""
    out = {}
    for part in ("train", "test"):
        images = read_idx(paths[f"{part}_images"], expected_magic=0x803)
        labels = read_idx(paths[f"{part}_labels"], expected_magic=0x801)
        if images.shape[0] != labels.shape[0] or images.shape[1:] != (28, 28):
            raise SourceError(
                f"MNIST {part}: images {images.shape} do not match labels {labels.shape} "
                f"({paths[f'{part}_images']}, {paths[f'{part}_labels']})."
            )
        if labels.max(initial=0) > 9:
            raise SourceError(f"{paths[f'{part}_labels']}: label {labels.max()} outside 0..9.")
        out[f"{part}_images"], out[f"{part}_labels"] = images, labels
    return out


def parse_audio_id(audio_id: str, path: Path | None = None) -> tuple[int, str, int]:
    """'3_jackson_12' -> (3, 'jackson', 12); FSDD's `{digit}_{speaker}_{index}` convention."""
    m = AUDIO_ID_RE.match(audio_id)
    if not m:
        raise SourceError(
            f"{path or audio_id}: FSDD recordings must be named {{digit}}_{{speaker}}_{{index}}.wav "
            "(e.g. 3_jackson_12.wav); rename or remove this file."
        )
    return int(m["digit"]), m["speaker"], int(m["index"])


def read_wav(path: Path, *, sample_rate: int = SAMPLE_RATE) -> np.ndarray:
    """Decodes a mono 16-bit PCM RIFF/WAVE file into int16 samples, rejecting anything else.

    Strict on purpose: a truncated data chunk, another sample rate or a stereo file would
    otherwise silently change the dataset.
    """
    data = Path(path).read_bytes()
    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        raise SourceError(f"{path} is not a RIFF/WAVE file; replace it with the original FSDD recording.")
    fmt, samples, pos = None, None, 12
    while pos + 8 <= len(data):
        chunk_id, size = struct.unpack("<4sI", data[pos : pos + 8])
        body = data[pos + 8 : pos + 8 + size]
        if chunk_id == b"fmt ":
            if len(body) < 16:
                raise SourceError(f"{path}: truncated fmt chunk; the file is corrupt.")
            fmt = struct.unpack("<HHIIHH", body[:16])
            if fmt[0] == 0xFFFE and len(body) >= 26:  # WAVE_FORMAT_EXTENSIBLE: sub-format tag
                fmt = (struct.unpack("<H", body[24:26])[0],) + fmt[1:]
        elif chunk_id == b"data":
            if len(body) < size:
                raise SourceError(
                    f"{path} is truncated: data chunk declares {size} bytes, file holds {len(body)}; "
                    "replace it with the original FSDD recording."
                )
            samples = body
            break
        pos += 8 + size + (size & 1)
    if fmt is None or samples is None:
        raise SourceError(f"{path}: no {'fmt' if fmt is None else 'data'} chunk; the wav is corrupt.")
    tag, channels, rate, _, _, bits = fmt
    if tag != 1 or bits != 16:
        raise SourceError(f"{path}: format tag {tag} with {bits} bits; expected 16-bit PCM (tag 1).")
    if channels != 1:
        raise SourceError(f"{path}: {channels} channels; AV-MNIST expects mono FSDD recordings.")
    if rate != sample_rate:
        raise SourceError(
            f"{path}: sample rate {rate} Hz, expected {sample_rate} Hz; resample it to "
            f"{sample_rate} Hz or use the original FSDD recording."
        )
    if len(samples) % 2:
        raise SourceError(f"{path}: odd number of data bytes ({len(samples)}) for 16-bit samples.")
    return np.frombuffer(samples, dtype="<i2").astype(np.int16)


def split_recordings(audio_ids: Iterable[str], index_ranges: Mapping[str, range]) -> dict[str, list[str]]:
    """Assigns recordings to splits by their FSDD index (e.g. 0-4 test); sorted, deterministic."""
    out: dict[str, list[str]] = {split: [] for split in index_ranges}
    for aid in sorted(audio_ids):
        _, _, index = parse_audio_id(aid)
        for split, r in index_ranges.items():
            if index in r:
                out[split].append(aid)
    return out
