"""Your own paired data: a CSV or JSON-lines manifest of image, audio and text as a TFDS dataset.

Importing this module registers the TFDS builder `manifest` (class `Manifest`). One row per
example; every column is optional except that a row needs at least one modality:
  image   a path (relative to the manifest's directory, or absolute) to anything Pillow opens;
          alpha is composited over white (as crossmodal/data/emoji.py does), then the image is
          centre-cropped to a square and resized to `image_size` by area averaging (exact block
          means for integer factors, Pillow's BOX filter otherwise; Pillow's bicubic to upscale)
  audio   a path to anything soundfile reads (wav, flac, ogg...), any rate and channel count:
          mixed to mono (`mono`), resampled with librosa to `sample_rate` (`resample`), stored as
          int16 PCM, cut or zero-padded at the end to `clip_seconds`
  text    a UTF-8 string, stored as it is (tokenised when read, so `text_length` and
          `lowercase` need no rebuild)
  label   a class name, or an index into the declared `classes`
  group   rows of one group never fall in two splits (a speaker, a session, a document)
  split   train / validation / test; without it, rows are split by `split_fractions` and
          `split_seed`, whole groups at a time
An empty cell is a missing modality: allowed for the modalities in `missing_ok`, and then the
example's `present` flag for it is False (the model's fusion never sees it; objectives that
need it skip the row).

Everything that shapes the stored bytes is a field of ManifestConfig; its name is the
manifest's file name plus a digest of those fields and of the manifest's bytes, so an edited
manifest or option gets its own directory. (Editing a file the manifest points to does not
change the name: prepare again with a new data_dir or delete the directory.) Reading a prepared
dataset needs only its name: `tfds.data_source('manifest/<name>', data_dir=...)` restores the
options from the dataset info.

Bad input stops the build before anything is written, with the manifest's line number, the
column, the value and what to do (ManifestError, listing every bad row). With
`on_error='skip'` those rows are left out instead and the dataset info's metadata says how many
and why (`skipped`). Problems of the whole manifest (an unknown column, a group in two given
splits, no usable rows) are always errors. Rows are decoded twice (a check pass, then the
writing pass), so memory does not grow with the dataset.
"""

from __future__ import annotations

import concurrent.futures
import csv
import dataclasses
import hashlib
import io
import json
import logging
import os
import re
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from crossmodal.data import fingerprint as fingerprint_lib
from crossmodal.data import tfds_formats

MODALITIES = ("image", "audio", "text")  # the columns of `present`, in this order
COLUMNS = MODALITIES + ("label", "group", "split")
SPLITS = ("train", "validation", "test")
ON_ERROR = ("raise", "skip")
IMAGE_CHANNELS = (1, 3)
MAX_LISTED = 20  # bad rows listed in an error message
_INT16_SCALE = 32768.0

log = logging.getLogger(__name__)


class ManifestError(ValueError):
    """A manifest (or a file it points to) that cannot become a dataset; says what to do."""


@dataclasses.dataclass(frozen=True)
class Problem:
    line: int
    column: str
    value: str
    message: str  # what is wrong and what to do
    reason: str  # a short key for the skip counts: 'missing file', 'empty text', ...

    def __str__(self) -> str:
        value = self.value if len(self.value) <= 80 else self.value[:77] + "..."
        return f"line {self.line}, column {self.column!r}, value {value!r}: {self.message}"


# ----------------------------------------------------------------------------- config


@dataclasses.dataclass
class ManifestConfig(tfds.core.BuilderConfig):
    """Every option that changes the stored bytes (see the module docstring)."""

    path: str = ""  # the manifest, absolute
    digest: str = ""  # sha256 of the manifest's bytes
    modalities: tuple[str, ...] = ()  # the columns used, in MODALITIES order
    missing_ok: tuple[str, ...] = ()
    image_size: int = 64
    image_channels: int = 3
    sample_rate: int = 16000
    clip_seconds: float = 1.0
    resample: bool = True
    mono: bool = True
    classes: tuple[str, ...] = ()  # declared class names; () collects them from the train split
    split_fractions: tuple[float, ...] = (0.8, 0.1, 0.1)
    split_seed: int = 0
    on_error: str = "raise"

    @property
    def clip_samples(self) -> int:
        return int(round(self.clip_seconds * self.sample_rate))

    def options(self) -> dict[str, Any]:
        """The fields as JSON values (stored in the dataset info; `from_options` reads them)."""
        return {name: _jsonable(getattr(self, name)) for name in _OPTION_FIELDS}


_OPTION_FIELDS = ("path", "digest", "modalities", "missing_ok", "image_size", "image_channels",
                  "sample_rate", "clip_seconds", "resample", "mono", "classes", "split_fractions",
                  "split_seed", "on_error")


def _jsonable(value):
    return list(value) if isinstance(value, tuple) else value


def check_options(*, modalities: Sequence[str], missing_ok: Sequence[str], image_size: int,
                  image_channels: int, sample_rate: int, clip_seconds: float,
                  split_fractions: Sequence[float], split_seed: int, on_error: str,
                  where: str = "config.data") -> list[str]:
    """Problems with the options themselves (no file is read)."""
    out = []
    for name, values in (("modalities", modalities), ("missing_ok", missing_ok)):
        bad = [m for m in values if m not in MODALITIES]
        if bad:
            out.append(f"{where}.{name}={tuple(values)}: {bad} are not modalities; valid: {MODALITIES}")
    if modalities and set(missing_ok) - set(modalities):
        out.append(f"{where}.missing_ok={tuple(missing_ok)} names modalities not in "
                   f"{where}.modalities={tuple(modalities)}")
    if not isinstance(image_size, int) or image_size < 1:
        out.append(f"{where}.image_size={image_size!r}: must be a positive int")
    if image_channels not in IMAGE_CHANNELS:
        out.append(f"{where}.image_channels={image_channels!r}: valid choices {IMAGE_CHANNELS}")
    if not isinstance(sample_rate, int) or sample_rate < 1:
        out.append(f"{where}.sample_rate={sample_rate!r}: must be a positive int (Hz)")
    if not clip_seconds > 0:
        out.append(f"{where}.clip_seconds={clip_seconds!r}: must be > 0")
    fractions = tuple(split_fractions)
    if len(fractions) != 3 or any(f < 0 for f in fractions) or abs(sum(fractions) - 1) > 1e-6:
        out.append(f"{where}.split_fractions={fractions}: three non-negative shares of train, "
                   "validation, test that sum to 1, e.g. (0.8, 0.1, 0.1)")
    if not isinstance(split_seed, int) or split_seed < 0:
        out.append(f"{where}.split_seed={split_seed!r}: must be a non-negative int")
    if on_error not in ON_ERROR:
        out.append(f"{where}.on_error={on_error!r}: valid choices {ON_ERROR}")
    return out


def manifest_config(path: str | os.PathLike, *, modalities: Sequence[str] = (),
                    missing_ok: Sequence[str] = (), image_size: int = 64, image_channels: int = 3,
                    sample_rate: int = 16000, clip_seconds: float = 1.0, resample: bool = True,
                    mono: bool = True, classes: Sequence[str] | str = (),
                    split_fractions: Sequence[float] = (0.8, 0.1, 0.1), split_seed: int = 0,
                    on_error: str = "raise") -> ManifestConfig:
    """The builder config of a manifest: reads its header (for `modalities=()`: every modality
    column it has) and its bytes (for the name's digest), and a `classes` file if one is given
    (a path: one class name per line, relative to the manifest)."""
    problems = check_options(modalities=modalities, missing_ok=missing_ok, image_size=image_size,
                             image_channels=image_channels, sample_rate=sample_rate,
                             clip_seconds=clip_seconds, split_fractions=split_fractions,
                             split_seed=split_seed, on_error=on_error)
    if problems:
        raise ManifestError("\n".join(problems))
    path = Path(path).expanduser().absolute()
    data = _read_bytes(path, "the manifest", "pass config.data.path=<your manifest .csv or .jsonl>")
    header = _header(path, data)
    if not modalities:
        modalities = tuple(m for m in MODALITIES if m in header)
    lacking = [m for m in modalities if m not in header]
    if lacking:
        raise ManifestError(f"{path}: config.data.modalities={tuple(modalities)} but the manifest "
                            f"has no {lacking} column (its columns: {list(header)})")
    if not modalities:
        raise ManifestError(f"{path}: no modality column; a manifest needs at least one of "
                            f"{MODALITIES} (its columns: {list(header)})")
    if isinstance(classes, str):
        classes = read_classes(path.parent / classes)
    fields = dict(path=str(path), digest=hashlib.sha256(data).hexdigest(),
                  modalities=tuple(m for m in MODALITIES if m in modalities),
                  missing_ok=tuple(m for m in MODALITIES if m in missing_ok),
                  image_size=int(image_size), image_channels=int(image_channels),
                  sample_rate=int(sample_rate), clip_seconds=float(clip_seconds),
                  resample=bool(resample), mono=bool(mono), classes=tuple(map(str, classes)),
                  split_fractions=tuple(float(f) for f in split_fractions),
                  split_seed=int(split_seed), on_error=on_error)
    digest = hashlib.sha256(json.dumps({k: _jsonable(v) for k, v in fields.items()},
                                       sort_keys=True).encode()).hexdigest()[:12]
    stem = re.sub(r"[^a-z0-9]+", "_", path.stem.lower()).strip("_") or "manifest"
    return ManifestConfig(name=f"{stem}_{digest}", description=f"manifest {path}", **fields)


def from_options(name: str, options: Mapping[str, Any]) -> ManifestConfig:
    fields = {k: tuple(v) if isinstance(v, list) else v for k, v in options.items()
              if k in _OPTION_FIELDS}
    return ManifestConfig(name=name, description=f"manifest {fields.get('path')}", **fields)


def read_classes(path: Path) -> tuple[str, ...]:
    text = _read_bytes(path, "the classes file", "give config.data.classes as a file of one "
                       "class name per line (relative to the manifest) or as names").decode("utf-8")
    names = tuple(line.strip() for line in text.splitlines() if line.strip())
    duplicates = sorted({n for n in names if names.count(n) > 1})
    if not names or duplicates:
        raise ManifestError(f"{path}: " + (f"class names {duplicates} appear twice" if duplicates
                                           else "no class names") + "; one distinct name per line")
    return names


# ----------------------------------------------------------------------------- reading rows


def _read_bytes(path: Path, what: str, todo: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as e:
        raise ManifestError(f"{what} {path} cannot be read ({e.strerror or e}); {todo}") from None


def _is_jsonl(path: Path) -> bool:
    return path.suffix.lower() in (".jsonl", ".json", ".ndjson")


def _header(path: Path, data: bytes) -> tuple[str, ...]:
    rows = read_rows(path, data)
    return rows[0][1] if rows else ()


def read_rows(path: Path, data: bytes) -> list[tuple[int, tuple[str, ...], dict[str, str]]]:
    """[(line number, columns, {column: cell as str})]: CSV with a header row (line 1), or one
    JSON object per line. ManifestError for an unknown column or a malformed line."""
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        raise ManifestError(f"{path} is not UTF-8 ({e}); save it as UTF-8") from None
    rows = []
    if _is_jsonl(path):
        for number, line in enumerate(text.splitlines(), 1):
            if not line.strip():
                continue
            try:
                obj = json.loads(line)
            except ValueError as e:
                raise ManifestError(f"{path}: line {number} is not a JSON object ({e})") from None
            if not isinstance(obj, dict):
                raise ManifestError(f"{path}: line {number} is a JSON {type(obj).__name__}, "
                                    "not an object of columns")
            _check_columns(path, number, tuple(obj))
            rows.append((number, tuple(obj), {k: "" if v is None else str(v) for k, v in obj.items()}))
        return rows
    reader = csv.reader(io.StringIO(text, newline=""))
    header = None
    for cells in reader:
        if header is None:
            header = tuple(c.strip() for c in cells)
            _check_columns(path, reader.line_num, header)
            continue
        if not any(c.strip() for c in cells):
            continue
        if len(cells) != len(header):
            raise ManifestError(f"{path}: line {reader.line_num} has {len(cells)} cells, the "
                                f"header {len(header)} ({list(header)}); quote cells that hold commas")
        rows.append((reader.line_num, header, dict(zip(header, cells))))
    return rows


def _check_columns(path: Path, line: int, columns: Sequence[str]) -> None:
    unknown = [c for c in columns if c not in COLUMNS]
    duplicated = sorted({c for c in columns if list(columns).count(c) > 1})
    if unknown or duplicated:
        what = (f"unknown column(s) {unknown}" if unknown else f"column(s) {duplicated} twice")
        raise ManifestError(f"{path}: line {line}: {what}; valid columns: {list(COLUMNS)} "
                            "(rename or remove the others)")


# ----------------------------------------------------------------------------- decoding


def resolve(manifest: Path, value: str) -> Path:
    p = Path(value).expanduser()
    return p if p.is_absolute() else manifest.parent / p


def composite_on_white(x: np.ndarray) -> np.ndarray:
    """uint8 [H, W, C+1] with alpha last -> uint8 [H, W, C] over white (emoji.read_png's rule)."""
    x = x.astype(np.float64)
    alpha = x[..., -1:] / 255.0
    return np.rint(x[..., :-1] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)


def resize_area(image: np.ndarray, size: int) -> np.ndarray:
    """uint8 [S, S, C] -> [size, size, C]: exact block means for integer factors (the emoji
    builder's 64 -> 32 rule), Pillow's BOX filter for other reductions, bicubic to enlarge."""
    from PIL import Image  # pylint: disable=import-outside-toplevel

    s, c = image.shape[0], image.shape[2]
    if s == size:
        return image
    if s > size and s % size == 0:
        f = s // size
        return np.rint(image.reshape(size, f, size, f, c).mean((1, 3))).astype(np.uint8)
    method = Image.BOX if s > size else Image.BICUBIC
    im = Image.fromarray(image[..., 0] if c == 1 else image)
    return np.asarray(im.resize((size, size), method)).reshape(size, size, c)


def read_image(path: Path, size: int, channels: int) -> np.ndarray:
    """uint8 [size, size, channels] (see the module docstring); OSError/ValueError if unreadable."""
    from PIL import Image  # pylint: disable=import-outside-toplevel

    with Image.open(io.BytesIO(path.read_bytes())) as im:
        im.load()
        alpha = im.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in im.info
        mode = {1: "L", 3: "RGB"}[channels] + ("A" if alpha else "")
        x = np.asarray(im.convert(mode))
    x = x.reshape(x.shape[:2] + (-1,))
    if alpha:
        x = composite_on_white(x)
    h, w = x.shape[:2]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return resize_area(np.ascontiguousarray(x[top:top + side, left:left + side]), size)


def _wav_declared_bytes(data: bytes) -> tuple[int, int] | None:
    """(declared, present) bytes of a RIFF/WAVE data chunk; None for other formats."""
    import struct  # pylint: disable=import-outside-toplevel

    if len(data) < 12 or data[:4] != b"RIFF" or data[8:12] != b"WAVE":
        return None
    pos = 12
    while pos + 8 <= len(data):
        chunk, size = struct.unpack("<4sI", data[pos:pos + 8])
        if chunk == b"data":
            return size, len(data) - pos - 8
        pos += 8 + size + (size & 1)
    return None


class AudioError(ValueError):
    def __init__(self, message: str, reason: str):
        super().__init__(message)
        self.reason = reason


def read_audio(path: Path, *, sample_rate: int, clip_samples: int, resample: bool,
               mono: bool) -> tuple[np.ndarray, int]:
    """(int16 [clip_samples], how many samples are real): mono, at `sample_rate`, cut or
    zero-padded at the end (crossmodal/data/avmnist.py's fit_to_length)."""
    import soundfile as sf  # pylint: disable=import-outside-toplevel

    data = path.read_bytes()
    wav = _wav_declared_bytes(data)
    if wav is not None and wav[1] < wav[0]:
        raise AudioError(f"truncated: its data chunk declares {wav[0]} bytes, the file holds "
                         f"{wav[1]}; replace the file", "truncated audio")
    try:
        with sf.SoundFile(io.BytesIO(data)) as f:
            frames, rate, channels = f.frames, f.samplerate, f.channels
            pcm16 = f.subtype in ("PCM_16", "PCM_S8", "PCM_U8")
            x = f.read(dtype="int16" if pcm16 else "float32", always_2d=True)
    except (RuntimeError, sf.LibsndfileError) as e:
        raise AudioError(f"not readable as audio ({e}); convert it to wav or flac",
                         "unreadable audio") from None
    if len(x) < frames:
        raise AudioError(f"truncated: its header promises {frames} frames, {len(x)} decode; "
                         "replace the file", "truncated audio")
    if channels > 1 and not mono:
        raise AudioError(f"has {channels} channels and config.data.mono=False; mix it down or "
                         "set mono=True", "channels")
    if rate != sample_rate and not resample:
        raise AudioError(f"is sampled at {rate} Hz, config.data.sample_rate={sample_rate} and "
                         "resample=False; resample the file or set resample=True",
                         "sample rate")
    if x.dtype == np.int16 and channels == 1 and rate == sample_rate:
        samples = x[:, 0]  # exact: no conversion
    else:
        y = x.astype(np.float64) / (_INT16_SCALE if x.dtype == np.int16 else 1.0)
        y = y.mean(axis=1)
        if rate != sample_rate:
            import librosa  # pylint: disable=import-outside-toplevel
            y = librosa.resample(y, orig_sr=rate, target_sr=sample_rate)
        samples = np.clip(np.rint(y * _INT16_SCALE), -_INT16_SCALE, _INT16_SCALE - 1).astype(np.int16)
    n = min(len(samples), clip_samples)
    out = np.zeros(clip_samples, np.int16)
    out[:n] = samples[:n]
    return out, n


# ----------------------------------------------------------------------------- rows to examples


@dataclasses.dataclass
class Row:
    line: int
    cells: dict[str, str]
    split: str = ""
    group: str = ""


def _decode_row(cfg: ManifestConfig, manifest: Path, row: Row) -> tuple[dict[str, Any], list[Problem]]:
    """The row's stored features (without label/split), or its problems."""
    out: dict[str, Any] = {"present": np.zeros(len(MODALITIES), bool), "line": row.line,
                           "group": row.cells.get("group", "").strip()}
    problems = []

    def problem(column, message, reason):
        problems.append(Problem(row.line, column, row.cells.get(column, ""), message, reason))

    for i, m in enumerate(MODALITIES):
        if m not in cfg.modalities:
            continue
        value = row.cells.get(m, "")
        present = bool(value.strip()) if m != "text" else bool(value)
        if not present:
            if m not in cfg.missing_ok:
                what = "empty text" if m == "text" else f"no {m}"
                problem(m, f"{what}; fill it in, or allow rows without it with "
                        f"config.data.missing_ok=('{m}',)", f"empty {m}")
        elif m == "text":
            out["text"] = value
        else:
            path = resolve(manifest, value.strip())
            if not path.is_file():
                problem(m, f"no such file {path}; fix the path (relative paths start at the "
                        "manifest's directory) or remove the row", "missing file")
                present = False
            elif m == "image":
                try:
                    out["image"] = read_image(path, cfg.image_size, cfg.image_channels)
                except (OSError, ValueError, SyntaxError) as e:
                    problem(m, f"{path} is not a readable image ({e}); replace or remove it",
                            "unreadable image")
                    present = False
            else:
                try:
                    out["audio"], out["audio_length"] = read_audio(
                        path, sample_rate=cfg.sample_rate, clip_samples=cfg.clip_samples,
                        resample=cfg.resample, mono=cfg.mono)
                except AudioError as e:
                    problem(m, f"{path} {e}", e.reason)
                    present = False
                except OSError as e:
                    problem(m, f"{path} cannot be read ({e}); replace or remove it",
                            "unreadable audio")
                    present = False
        out["present"][i] = present
    if not problems and not out["present"].any():
        problem(cfg.modalities[0], f"the row has none of the modalities {cfg.modalities}",
                "empty row")
    return out, problems


def _fill_missing(cfg: ManifestConfig, example: dict[str, Any]) -> dict[str, Any]:
    """Zeros (and empty text) where a modality is missing, so every example has every feature."""
    if "image" in cfg.modalities and "image" not in example:
        example["image"] = np.zeros((cfg.image_size, cfg.image_size, cfg.image_channels), np.uint8)
    if "audio" in cfg.modalities and "audio" not in example:
        example["audio"], example["audio_length"] = np.zeros(cfg.clip_samples, np.int16), 0
    if "text" in cfg.modalities and "text" not in example:
        example["text"] = ""
    return example


def _assign_splits(cfg: ManifestConfig, manifest: Path, rows: list[Row]) -> None:
    """Sets each row's split: as given, or by fractions over whole groups (seeded)."""
    if rows and "split" in rows[0].cells:
        by_group: dict[str, dict[str, int]] = {}
        for r in rows:
            r.split = r.cells["split"].strip()
            if r.split not in SPLITS:
                raise ManifestError(f"{manifest}: line {r.line}, column 'split', value {r.split!r}: "
                                    f"valid splits are {SPLITS}")
            if r.cells.get("group", "").strip():
                by_group.setdefault(r.group, {}).setdefault(r.split, r.line)
        leaks = {g: s for g, s in by_group.items() if len(s) > 1}
        if leaks:
            listed = [f"group {g!r} in {', '.join(f'{k} (line {v})' for k, v in s.items())}"
                      for g, s in list(leaks.items())[:MAX_LISTED]]
            raise ManifestError(f"{manifest}: {len(leaks)} group(s) appear in two splits, which "
                                "leaks between them; give each group one split:\n  " + "\n  ".join(listed))
        return
    groups: dict[str, list[Row]] = {}
    for r in rows:
        groups.setdefault(r.group, []).append(r)
    names = sorted(groups)
    order = np.random.default_rng(cfg.split_seed).permutation(len(names))
    bounds = np.cumsum(cfg.split_fractions) * len(rows)
    done = 0
    for k in order:
        members = groups[names[k]]
        # The split whose share the group's midpoint falls into.
        split = SPLITS[min(int(np.searchsorted(bounds, done + len(members) / 2, side="right")), 2)]
        for r in members:
            r.split = split
        done += len(members)


def _labels(cfg: ManifestConfig, manifest: Path, rows: list[Row]) -> tuple[tuple[str, ...], dict[int, int], list[Problem]]:
    """(class names, {line: label index}, problems) for a manifest with a label column."""
    def value(r):
        return r.cells["label"].strip()

    classes = cfg.classes
    if not classes:
        seen = {value(r) for r in rows if r.split == "train" and value(r)}
        numeric = all(re.fullmatch(r"\d+", v) for v in seen)
        classes = tuple(sorted(seen, key=int) if numeric and seen else sorted(seen))
    index = {name: i for i, name in enumerate(classes)}
    labels, problems = {}, []
    for r in rows:
        v = value(r)
        if v in index:
            labels[r.line] = index[v]
        elif cfg.classes and re.fullmatch(r"\d+", v) and int(v) < len(classes):
            labels[r.line] = int(v)
        elif not v:
            problems.append(Problem(r.line, "label", v, "empty label; give every row a class",
                                    "empty label"))
        elif cfg.classes:
            problems.append(Problem(r.line, "label", v, f"not one of the {len(classes)} declared "
                                    "classes (config.data.classes) nor an index into them; fix the "
                                    "label or declare the class", "unknown label"))
        else:
            problems.append(Problem(r.line, "label", v, f"the class does not occur in the train "
                                    f"split ({r.split} row); declare config.data.classes or move "
                                    "the row", "unknown label"))
    return classes, labels, problems


def _duplicates(cfg: ManifestConfig, manifest: Path, rows: list[Row]) -> list[Problem]:
    first: dict[tuple, int] = {}
    problems = []
    for r in rows:
        key = tuple(str(resolve(manifest, r.cells.get(m, "").strip())) if m != "text" and r.cells.get(m, "").strip()
                    else r.cells.get(m, "") for m in cfg.modalities) + (r.cells.get("label", "").strip(),)
        if key in first:
            problems.append(Problem(r.line, cfg.modalities[0], r.cells.get(cfg.modalities[0], ""),
                                    f"duplicates line {first[key]} (the same "
                                    f"{'/'.join(cfg.modalities)} and label); remove one of them",
                                    "duplicate row"))
        else:
            first[key] = r.line
    return problems


def _report(manifest: Path, problems: Sequence[Problem], skipping: bool) -> str:
    listed = "\n  ".join(str(p) for p in problems[:MAX_LISTED])
    more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
    tail = ("" if skipping else "\nFix these rows, or set config.data.on_error='skip' to leave "
            "them out (the dataset info then counts them).")
    return f"{manifest}: {len(problems)} bad row(s):\n  {listed}{more}{tail}"


def decode_all(cfg: ManifestConfig) -> list[dict[str, Any]]:
    """Every row of the manifest decoded with `cfg`'s options, in order, without splits, labels
    or a prepared dataset (what scripts/search.py embeds: a collection of any size, labelled
    or not). Bad rows raise a ManifestError listing them, or with on_error='skip' are left out
    with a warning. Each example has `line` and `present`; a row's missing modalities are
    filled with zeros."""
    manifest = Path(cfg.path)
    data = _read_bytes(manifest, "the manifest", "give the collection's manifest")
    if hashlib.sha256(data).hexdigest() != cfg.digest:
        raise ManifestError(f"{manifest} changed since its config was made; make the config again")
    rows = [Row(line, cells) for line, _, cells in read_rows(manifest, data)]
    if not rows:
        raise ManifestError(f"{manifest} has no rows; add one row per item")
    with concurrent.futures.ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1))) as pool:
        decoded = list(pool.map(lambda r: _decode_row(cfg, manifest, r), rows))
    problems = sorted((p for _, ps in decoded for p in ps), key=lambda p: p.line)
    if problems and cfg.on_error == "raise":
        raise ManifestError(_report(manifest, problems, skipping=False).replace(
            "config.data.on_error='skip'", "on_error='skip'"))
    examples = [_fill_missing(cfg, ex) for ex, ps in decoded if not ps]
    if not examples:
        raise ManifestError(_report(manifest, problems, skipping=True) + "\nNo row is left.")
    if problems:
        log.warning("%s", _report(manifest, problems, skipping=True))
    return examples


# ----------------------------------------------------------------------------- builder


def _restore_config(name: str, data_dir) -> ManifestConfig:
    """The config of a dataset prepared earlier, from its dataset_info.json (so that
    `tfds.data_source('manifest/<name>')` works without the original options)."""
    root = epath.Path(data_dir or tfds.core.constants.DATA_DIR).expanduser()
    infos = sorted((root / "manifest" / name).glob("*/dataset_info.json"))
    if not infos:
        raise ManifestError(f"manifest/{name} is not prepared in {root}; prepare it from the "
                            "manifest (crossmodal.data.manifest.prepare(manifest_config(path)))")
    meta = infos[-1].parent / "metadata.json"
    options = json.loads(meta.read_text()).get("options") if meta.exists() else None
    if not options:
        raise ManifestError(f"{infos[-1].parent} records no manifest options; prepare it again")
    options = json.loads(options) if isinstance(options, str) else options
    return from_options(name, options)


class Manifest(tfds_formats.PreparedDataSource, tfds.core.GeneratorBasedBuilder):
    """A user's manifest of image/audio/text rows (see the module docstring)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release."}

    def __init__(self, *, config: ManifestConfig | str, data_dir=None,
                 write_tfrecord: bool | None = None, **kwargs):
        if isinstance(config, str):
            config = _restore_config(config.split(":")[0], data_dir)
        self._write_tfrecord = write_tfrecord
        kwargs.pop("file_format", None)  # as in avmnist.Avmnist
        super().__init__(config=config, data_dir=data_dir, **kwargs)

    @tfds.core.utils.classproperty
    @classmethod
    def _checksums_path(cls):  # nothing is downloaded; TFDS would look beside this module
        return None

    def _info(self) -> tfds.core.DatasetInfo:
        cfg: ManifestConfig = self.builder_config
        features = {
            "present": tfds.features.Tensor(shape=(len(MODALITIES),), dtype=np.bool_,
                                            doc=f"which of {MODALITIES} the row has"),
            "label": tfds.features.Scalar(dtype=np.int64, doc="index into metadata['classes']; "
                                          "0 when the manifest has no labels"),
            "group": tfds.features.Text(doc="the row's group ('' if none)"),
            "line": tfds.features.Scalar(dtype=np.int64, doc="the row's line in the manifest"),
        }
        if "image" in cfg.modalities:
            shape = (cfg.image_size, cfg.image_size, cfg.image_channels)
            features["image"] = tfds.features.Tensor(shape=shape, dtype=np.uint8, encoding="zlib")
        if "audio" in cfg.modalities:
            features["audio"] = tfds.features.Tensor(shape=(cfg.clip_samples,), dtype=np.int16,
                                                     encoding="zlib")
            features["audio_length"] = tfds.features.Scalar(dtype=np.int32,
                                                            doc="samples before zero padding")
        if "text" in cfg.modalities:
            features["text"] = tfds.features.Text()
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict(features),
            description=f"Rows of {cfg.path}.",
            metadata=tfds.core.MetadataDict(),
            disable_shuffling=True,  # stored order = manifest order
        )

    def download_and_prepare(self, *, download_dir=None, download_config=None, file_format=None, **kwargs):
        kwargs["file_format"] = file_format or "array_record"
        return super().download_and_prepare(download_dir=download_dir,
                                            download_config=download_config, **kwargs)

    def how_to_prepare(self) -> str:
        return "crossmodal.data.manifest.get_data_source(...) prepares it."

    def _split_generators(self, dl_manager):
        del dl_manager
        cfg: ManifestConfig = self.builder_config
        manifest = Path(cfg.path)
        data = _read_bytes(manifest, "the manifest", "check config.data.path")
        if hashlib.sha256(data).hexdigest() != cfg.digest:
            raise ManifestError(f"{manifest} changed since its config was made; make the config "
                                "again (manifest_config) so that the dataset gets a new name")
        # A row without a group is a group of its own (named by position, not by line, so a
        # CSV and a JSON-lines copy of one manifest split alike).
        rows = [Row(line, cells, group=cells.get("group", "").strip() or f"\0row {k}")
                for k, (line, _, cells) in enumerate(read_rows(manifest, data))]
        if not rows:
            raise ManifestError(f"{manifest} has no rows; add one row per example")
        _assign_splits(cfg, manifest, rows)
        problems = _duplicates(cfg, manifest, rows)
        labelled = "label" in rows[0].cells
        classes, labels = (), {}
        if labelled:
            classes, labels, label_problems = _labels(cfg, manifest, rows)
            problems += label_problems
        # The check pass: decode every row (in parallel; the order of results is the rows').
        with concurrent.futures.ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1))) as pool:
            for _, row_problems in pool.map(lambda r: _decode_row(cfg, manifest, r), rows):
                problems += row_problems
        problems.sort(key=lambda p: p.line)
        if problems and cfg.on_error == "raise":
            raise ManifestError(_report(manifest, problems, skipping=False))
        bad = {p.line for p in problems}
        kept = [r for r in rows if r.line not in bad]
        if not kept:
            raise ManifestError(_report(manifest, problems, skipping=True) + "\nNo row is left.")
        if problems:
            log.warning("%s", _report(manifest, problems, skipping=True))
        sizes = {split: sum(r.split == split for r in kept) for split in SPLITS}
        empty = [split for split, n in sizes.items() if not n]
        if empty:
            how = ("its split column gives none" if "split" in rows[0].cells else
                   f"config.data.split_fractions={cfg.split_fractions} over {len(kept)} rows in "
                   f"{len({r.group for r in kept})} group(s) leaves none")
            raise ManifestError(f"{manifest}: the {'/'.join(empty)} split would be empty ({how}); "
                                "training needs train, validation and test rows: add rows, or "
                                "give a split column")
        reasons: dict[str, int] = {}
        for p in problems:
            reasons[p.reason] = reasons.get(p.reason, 0) + 1
        self.info.metadata.update(
            options=json.dumps(cfg.options(), sort_keys=True),
            classes=list(classes), labelled=labelled,
            skipped={"rows": len(bad), "reasons": reasons,
                     "first": [str(p) for p in problems[:MAX_LISTED]]})
        return {split: self._generate_examples(cfg, manifest, [r for r in kept if r.split == split],
                                               labels)
                for split in SPLITS}

    def _generate_examples(self, cfg, manifest, rows, labels) -> Iterator[tuple[int, dict]]:
        with concurrent.futures.ThreadPoolExecutor(max(1, min(8, os.cpu_count() or 1))) as pool:
            for row, (example, problems) in zip(rows, pool.map(lambda r: _decode_row(cfg, manifest, r), rows)):
                if problems:  # the file changed after the check pass
                    raise ManifestError(_report(manifest, problems, skipping=False))
                example = _fill_missing(cfg, example)
                example["label"] = labels.get(row.line, 0)
                yield row.line, example

    def _download_and_prepare(self, dl_manager, download_config):
        super()._download_and_prepare(dl_manager, download_config)
        fingerprint_lib.record(self.info)
        write = tfds_formats.tensorflow_available() if self._write_tfrecord is None else self._write_tfrecord
        if write:
            tfds_formats.add_tfrecord_copy(self.info)


# ----------------------------------------------------------------------------- loading


def get_builder(config: ManifestConfig | str, *, data_dir=None, **kwargs) -> Manifest:
    return Manifest(config=config, data_dir=data_dir, **kwargs)


def prepare(config: ManifestConfig, *, data_dir=None, **kwargs) -> Manifest:
    """Prepares the manifest's dataset once (no-op if on disk; tfds_formats.prepare_once)."""
    return tfds_formats.prepare_once(lambda: get_builder(config, data_dir=data_dir, **kwargs))


def get_data_source(split: str, *, config: ManifestConfig, data_dir=None):
    if split not in SPLITS:
        raise ValueError(f"Unknown manifest split {split!r}; valid: {', '.join(SPLITS)}.")
    return prepare(config, data_dir=data_dir).as_data_source(split=split)


def metadata(builder: Manifest) -> dict[str, Any]:
    """classes, labelled, skipped, fingerprint: what the dataset info records."""
    return dict(builder.info.metadata)


class ModelExamples:
    """A prepared manifest split as model examples: the stored modalities, `text` tokenised
    (`text_length` byte ids, optionally lower-cased), `label`, and, when rows may lack a
    modality (`missing_ok`), `present` (bool [3] in MODALITIES order, the batch's modality
    mask; complete data carries none, so it trains exactly as a built-in dataset does)."""

    def __init__(self, source, modalities: Sequence[str], *, text_length: int = 64,
                 lowercase: bool = False, with_present: bool = True):
        self._source = source
        self.modalities, self.with_present = tuple(modalities), bool(with_present)
        self.text_length, self.lowercase = int(text_length), bool(lowercase)

    def __len__(self) -> int:
        return len(self._source)

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        from crossmodal.models import text as text_lib  # pylint: disable=import-outside-toplevel

        return text_lib.encode([t.lower() if self.lowercase else t for t in texts], self.text_length)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        ex = self._source[index]
        out = {"label": np.asarray(ex["label"], np.int64)}
        if self.with_present:
            out["present"] = np.asarray(ex["present"], bool)
        for m in self.modalities:
            if m == "text":
                t = ex["text"]
                out["text"] = self.encode([t.decode("utf-8") if isinstance(t, bytes) else str(t)])[0]
            else:
                out[m] = np.asarray(ex[m])
        return out
