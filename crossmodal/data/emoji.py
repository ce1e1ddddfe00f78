"""Emoji images with their names as a TFDS dataset (image-text): 1911 emoji in two styles.

Importing this module registers the TFDS builder `emoji` (class `Emoji`). Sources: the npm
packages emoji-datasource-twitter@16.0.0 and emoji-datasource-google@16.0.0 (the emoji-data
project): `emoji.json` (name, short names, category, subcategory, image file) and 64x64 PNGs
drawn independently by Twitter (Twemoji, CC BY 4.0, graphics by Twitter, Inc. and other
contributors) and Google (Noto Emoji, Apache 2.0); metadata MIT. Read from `<dir>/emoji/`
(../shared/data on the team machines), or fetched from the npm registry; every file is checked
against `checksums/emoji.tsv`.

An example is one entry drawn in one style: `image` uint8 [64, 64, 3] (alpha composited on
white), `name` ("Egypt Flag"), `short_names` ("flag-eg"), `category` (10 classes),
`subcategory` (99), `style`, `id` (the unified code point, unique per entry). The emoji-data
metadata has no keyword lists; short names are the extra text it offers.

Two kinds of split measure different things (`split_seed` seeds both):
  <a>_to_<b>   cross-style: train on every entry drawn in style a; validation and test are
               style b, entries split 20/80 within each subcategory. Same concepts and names,
               a different drawing: measures whether the image side transfers across styles
               (text is shared with training, so text alone identifies a test entry).
  held_out_<s> held-out concepts, one style: within each subcategory a seeded 20% of entries
               go to test and 10% to validation, never to training (at least one entry of
               every subcategory stays in training). Text-to-image retrieval must generalise
               from words seen in other names ("Egypt Flag" after "Japan Flag"). Shares are
               rounded by Python's round (half to even): 3 subcategories of 1-2 entries have
               no test entry and 11 small ones no validation entry.
"""

from __future__ import annotations

import dataclasses
import io
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from crossmodal.data import fingerprint
from crossmodal.data import sources
from crossmodal.data import tfds_formats

STYLES = ("twitter", "google")
SPLITS = ("train", "validation", "test")
KINDS = ("cross_style", "held_out")
IMAGE_SHAPE = (64, 64, 3)
SUBDIR = "emoji"
CHECKSUMS = sources.CHECKSUMS_DIR / "emoji.tsv"
URLS_TABLE = sources.CHECKSUMS_DIR / "emoji_urls.tsv"  # TFDS format: the two npm archives
NPM_VERSION = "16.0.0"
NPM_URLS = {
    s: f"https://registry.npmjs.org/emoji-datasource-{s}/-/emoji-datasource-{s}-{NPM_VERSION}.tgz"
    for s in STYLES
}
HELD_OUT_SHARES = {"test": 0.2, "validation": 0.1}  # of each subcategory's entries
CROSS_STYLE_VALIDATION_SHARE = 0.2  # of each subcategory's entries; the rest is test
LAYOUT_HELP = (
    "Expected layout: <dir>/emoji/{emoji.json,categories.json,twitter-64/*.png,google-64/*.png} "
    f"(npm emoji-datasource-{{twitter,google}}@{NPM_VERSION}). Pass manual_dir=..., set "
    f"${sources.ENV_VAR}, or see docs/data.md."
)

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- configs


@dataclasses.dataclass
class EmojiConfig(tfds.core.BuilderConfig):
    """One split layout (see the module docstring); every field changes the bytes on disk."""

    kind: str = "held_out"
    style: str = "twitter"  # held_out: the only style; cross_style: the training style
    split_seed: int = 0

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"EmojiConfig.kind={self.kind!r}; valid choices: {', '.join(KINDS)}.")
        if self.style not in STYLES:
            raise ValueError(f"EmojiConfig.style={self.style!r}; valid choices: {', '.join(STYLES)}.")
        if not isinstance(self.split_seed, int) or self.split_seed < 0:
            raise ValueError(f"EmojiConfig.split_seed={self.split_seed!r}; must be a non-negative int.")

    @property
    def test_style(self) -> str:
        return self.style if self.kind == "held_out" else _other(self.style)


def _other(style: str) -> str:
    return STYLES[1 - STYLES.index(style)]


def config_name(kind: str = "held_out", style: str = "twitter", split_seed: int = 0) -> str:
    name = f"held_out_{style}" if kind == "held_out" else f"{style}_to_{_other(style)}"
    return name + (f"_seed{split_seed}" if split_seed else "")


def _describe(kind: str, style: str, split_seed: int = 0) -> str:
    seed = f" (split seed {split_seed})" if split_seed else ""
    if kind == "held_out":
        return (f"Held-out concepts{seed}: {style} images; per subcategory 20% of entries test, "
                "10% validation, the rest train.")
    return (f"Cross-style{seed}: train on {style} images of every entry; validation/test are "
            f"{_other(style)} images (20/80 of the entries per subcategory).")


def emoji_config(kind: str = "held_out", style: str = "twitter", split_seed: int = 0) -> EmojiConfig:
    fields = dict(kind=kind, style=style, split_seed=split_seed)
    EmojiConfig(name="unchecked", **fields)  # validates first: _describe needs a valid style
    config = EmojiConfig(name=config_name(**fields), description=_describe(**fields), **fields)
    return _PREDEFINED.get(config.name, config)


BUILDER_CONFIGS = [
    EmojiConfig(name=config_name(k, s), description=_describe(k, s), kind=k, style=s)
    for k in ("held_out", "cross_style") for s in STYLES
]
_PREDEFINED = {c.name: c for c in BUILDER_CONFIGS}
_NAME_RE = re.compile(r"^(?:held_out_(?P<held>[a-z]+)|(?P<a>[a-z]+)_to_(?P<b>[a-z]+))(?:_seed(?P<seed>\d+))?$")
NAME_GRAMMAR = ("held_out_<twitter|google> or twitter_to_google / google_to_twitter, optionally "
                "_seed<int> for split seeds >= 1 (seed 0 has no suffix)")


def _parse_name(name: str) -> EmojiConfig | None:
    m = _NAME_RE.match(name)
    if not m:
        return None
    kind, style = ("held_out", m["held"]) if m["held"] else ("cross_style", m["a"])
    if style not in STYLES or not (m["held"] or m["b"] == _other(style)):
        return None
    return emoji_config(kind, style, int(m["seed"] or 0))


def resolve_config(config: str | EmojiConfig | None) -> EmojiConfig:
    return tfds_formats.resolve_config(config, EmojiConfig, _PREDEFINED, Emoji.DEFAULT_CONFIG_NAME,
                                       _parse_name, "emoji", f"Names follow {NAME_GRAMMAR}.")


# ----------------------------------------------------------------------------- sources


@dataclasses.dataclass(frozen=True)
class Metadata:
    """Entries in emoji.json order, with the category and subcategory orders of categories.json."""

    entries: tuple[Mapping, ...]
    categories: tuple[str, ...]
    subcategories: tuple[str, ...]


def read_metadata(emoji_json: Path, categories_json: Path) -> Metadata:
    try:
        entries = json.loads(Path(emoji_json).read_text(encoding="utf-8"))
        order = json.loads(Path(categories_json).read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise sources.SourceError(f"emoji metadata unreadable ({emoji_json}, {categories_json}): {e}") from e
    needed = ("name", "unified", "image", "short_names", "category", "subcategory")
    for i, e in enumerate(entries):
        lacking = [k for k in needed if k not in e]
        if lacking:
            raise sources.SourceError(f"{emoji_json}: entry {i} lacks {lacking}.")
    categories = tuple(order)
    used = {e["subcategory"] for e in entries}
    subcategories = tuple(s for c in categories for s in order[c] if s in used)
    unknown = sorted({e["category"] for e in entries} - set(categories)) + sorted(used - set(subcategories))
    if unknown:
        raise sources.SourceError(f"{emoji_json}: categories/subcategories {unknown} not in {categories_json}.")
    return Metadata(tuple(entries), categories, subcategories)


def locate_sources(root: Path, *, verify_checksums: bool = True) -> dict[str, Path]:
    """{relative path: file} for the metadata and every entry's PNG in both styles."""
    table = sources.load_checksum_table(CHECKSUMS)
    files = {rel: root / rel for rel in table}
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise sources.SourceError(
            f"emoji sources incomplete in {root}: {len(missing)} missing:\n  "
            + "\n  ".join(sources.first_items(missing)) + f"\n{LAYOUT_HELP}"
        )
    if verify_checksums:
        sources.verify_files(files, table, str(root), dataset="emoji",
                             origin=f"npm emoji-datasource-{{twitter,google}}@{NPM_VERSION}")
    return files


def download_sources(dl_manager, *, verify_checksums: bool = True) -> dict[str, Path]:
    """Fetches both npm packages and maps their files to the manual-dir layout, checked per file."""
    extracted = dl_manager.download_and_extract(dict(NPM_URLS))
    table = sources.load_checksum_table(CHECKSUMS)
    files = {}
    for rel in table:
        if "/" in rel:
            style = rel.split("-64/")[0]
            files[rel] = Path(os.fspath(extracted[style])) / "package" / "img" / style / "64" / Path(rel).name
        else:
            files[rel] = Path(os.fspath(extracted["twitter"])) / "package" / rel
    missing = [str(p) for p in files.values() if not p.is_file()]
    if missing:
        raise sources.SourceError(f"the npm packages lack {len(missing)} expected file(s):\n  "
                                  + "\n  ".join(sources.first_items(missing)))
    if verify_checksums:
        sources.verify_files(files, table, "the TFDS download directory", dataset="emoji",
                             origin=f"npm emoji-datasource-{{twitter,google}}@{NPM_VERSION}")
    return files


def read_png(path: Path) -> np.ndarray:
    """uint8 [64, 64, 3]: the PNG composited over white (the images are RGBA, transparent around)."""
    from PIL import Image  # pylint: disable=import-outside-toplevel

    try:
        with Image.open(io.BytesIO(Path(path).read_bytes())) as im:
            im.load()
            rgba = im.convert("RGBA")
    except (OSError, ValueError, SyntaxError) as e:
        raise sources.SourceError(f"{path}: not a readable PNG ({e}).") from e
    if rgba.size != IMAGE_SHAPE[:2]:
        raise sources.SourceError(f"{path}: {rgba.size[0]}x{rgba.size[1]} pixels, expected 64x64.")
    x = np.asarray(rgba, np.float64)
    alpha = x[..., 3:] / 255.0
    return np.rint(x[..., :3] * alpha + 255.0 * (1.0 - alpha)).astype(np.uint8)


def assign_splits(meta: Metadata, kind: str, seed: int) -> dict[str, np.ndarray]:
    """{split: entry indices (sorted)}, stratified by subcategory and seeded; see the docstring.

    cross_style: train is every entry; validation/test partition the entries.
    held_out: train/validation/test partition the entries, every subcategory kept in train.
    """
    by_sub: dict[str, list[int]] = {}
    for i, e in enumerate(meta.entries):
        by_sub.setdefault(e["subcategory"], []).append(i)
    out: dict[str, list[int]] = {s: [] for s in SPLITS}
    for code, sub in enumerate(meta.subcategories):
        members = np.asarray(by_sub[sub])
        order = members[np.random.default_rng([seed, code]).permutation(len(members))]
        n = len(order)
        if kind == "cross_style":
            n_val = int(round(CROSS_STYLE_VALIDATION_SHARE * n))
            out["validation"] += order[:n_val].tolist()
            out["test"] += order[n_val:].tolist()
            out["train"] += order.tolist()
        else:
            n_test = int(round(HELD_OUT_SHARES["test"] * n))
            n_val = int(round(HELD_OUT_SHARES["validation"] * n))
            while n_test + n_val > n - 1 and n_test + n_val > 0:  # keep one entry for training
                if n_val:
                    n_val -= 1
                else:
                    n_test -= 1
            out["test"] += order[:n_test].tolist()
            out["validation"] += order[n_test:n_test + n_val].tolist()
            out["train"] += order[n_test + n_val:].tolist()
    return {s: np.sort(np.asarray(v, np.int64)) for s, v in out.items()}


# ----------------------------------------------------------------------------- builder


class Emoji(tfds_formats.PreparedDataSource, tfds.core.GeneratorBasedBuilder):
    """Emoji images with names, categories and subcategories (see the module docstring)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: held-out concepts and cross-style splits."}
    BUILDER_CONFIGS = BUILDER_CONFIGS
    DEFAULT_CONFIG_NAME = "held_out_twitter"

    def __init__(self, *, config=None, verify_checksums: bool = True, write_tfrecord: bool | None = None,
                 **kwargs):
        self._verify_checksums = verify_checksums
        self._write_tfrecord = write_tfrecord
        self._manual_dir = None
        kwargs.pop("file_format", None)  # as in avmnist.Avmnist: tfds.data_source asks for it
        super().__init__(config=resolve_config(config), **kwargs)

    @tfds.core.utils.classproperty
    @classmethod
    def _checksums_path(cls):
        return epath.Path(URLS_TABLE)

    def _info(self) -> tfds.core.DatasetInfo:
        meta = _label_names()
        return self.dataset_info_from_configs(
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=IMAGE_SHAPE, dtype=np.uint8, encoding="zlib"),
                "name": tfds.features.Text(doc="the entry's name, e.g. 'Egypt Flag'"),
                "short_names": tfds.features.Text(doc="its short names, space-separated"),
                "category": tfds.features.ClassLabel(names=meta[0]),
                "subcategory": tfds.features.ClassLabel(names=meta[1]),
                "style": tfds.features.ClassLabel(names=STYLES),
                "id": tfds.features.Text(doc="unified code point(s), e.g. '1F1EA-1F1EC'"),
            }),
            homepage="https://github.com/iamcal/emoji-data",
            citation=("emoji-data (Cal Henderson and contributors, MIT); Twemoji graphics by Twitter, Inc. "
                      "and other contributors, CC BY 4.0; Noto Emoji by Google, Apache 2.0."),
            metadata=tfds.core.MetadataDict(),
            disable_shuffling=True,
        )

    def download_and_prepare(self, *, download_dir=None, download_config=None, file_format=None, **kwargs):
        self._manual_dir = download_config.manual_dir if download_config is not None else None
        kwargs["file_format"] = file_format or "array_record"
        return super().download_and_prepare(download_dir=download_dir, download_config=download_config,
                                            **kwargs)

    def how_to_prepare(self) -> str:
        return "crossmodal.data.emoji.get_data_source(...) prepares it."

    def _split_generators(self, dl_manager):
        cfg: EmojiConfig = self.builder_config
        manual_dir = sources.resolve_manual_dir(self._manual_dir)
        if manual_dir is not None:
            files = locate_sources(manual_dir / SUBDIR, verify_checksums=self._verify_checksums)
            origin = str(manual_dir / SUBDIR)
        else:
            files = download_sources(dl_manager, verify_checksums=self._verify_checksums)
            origin = ", ".join(NPM_URLS.values())
        log.info("emoji %s: sources from %s", cfg.name, origin)
        meta = read_metadata(files["emoji.json"], files["categories.json"])
        if (meta.categories, meta.subcategories) != _label_names():
            raise sources.SourceError("emoji metadata: categories differ from those this builder was "
                                      "written for (a different emoji-datasource version?).")
        splits = assign_splits(meta, cfg.kind, cfg.split_seed)
        self.info.metadata.update(kind=cfg.kind, style=cfg.style, split_seed=cfg.split_seed,
                                  test_style=cfg.test_style)
        generators = {}
        for split in SPLITS:
            style = cfg.style if split == "train" else cfg.test_style
            entries = [meta.entries[i] for i in splits[split]]
            # Decode every image now, so a bad file fails before anything is written.
            images = [read_png(files[f"{style}-64/{e['image']}"]) for e in entries]
            generators[split] = self._generate_examples(entries, images, style, meta)
        return generators

    def _generate_examples(self, entries, images, style, meta: Metadata):
        for e, image in zip(entries, images):
            yield e["unified"], {
                "image": image,
                "name": e["name"],
                "short_names": " ".join(e["short_names"]),
                "category": meta.categories.index(e["category"]),
                "subcategory": meta.subcategories.index(e["subcategory"]),
                "style": style,
                "id": e["unified"],
            }

    def _download_and_prepare(self, dl_manager, download_config):
        super()._download_and_prepare(dl_manager, download_config)
        fingerprint.record(self.info)  # of the array_record files, before any tfrecord copy
        write = tfds_formats.tensorflow_available() if self._write_tfrecord is None else self._write_tfrecord
        if write:
            tfds_formats.add_tfrecord_copy(self.info)


def _label_names() -> tuple[tuple[str, ...], tuple[str, ...]]:
    """Category and subcategory names of emoji-datasource 16.0.0, in categories.json order."""
    return CATEGORIES, SUBCATEGORIES


# ----------------------------------------------------------------------------- loading


def get_builder(config: str | EmojiConfig = "held_out_twitter", *, data_dir=None, **kwargs) -> Emoji:
    return Emoji(config=config, data_dir=data_dir, **kwargs)


def prepare(config: str | EmojiConfig = "held_out_twitter", *, data_dir=None, manual_dir=None, **kwargs):
    """Prepares the split layout once (no-op if already on disk; see tfds_formats.prepare_once)."""
    return tfds_formats.prepare_once(lambda: get_builder(config, data_dir=data_dir, **kwargs), manual_dir)


def get_data_source(split: str, *, config: str | EmojiConfig = "held_out_twitter", data_dir=None,
                    manual_dir=None):
    if split not in SPLITS:
        raise ValueError(f"Unknown emoji split {split!r}; valid: {', '.join(SPLITS)}.")
    return prepare(config, data_dir=data_dir, manual_dir=manual_dir).as_data_source(split=split)


# ----------------------------------------------------------------------------- model examples

LABELS = ("category", "subcategory")
TEXT_FIELDS = ("name", "short_names")


class ModelExamples:
    """A random-access source of model examples: `image`, `text` (byte ids), `label`.

    label: 'category' or 'subcategory'; text_fields: which of TEXT_FIELDS make the caption
    (joined by '; '); lowercase: emoji-data spells some names in capitals ('HASH KEY'), others
    not ('Egypt Flag'), so by default both become lower case; image_size 64 or 32 (2x2 mean).
    """

    def __init__(self, source, *, label: str = "category", text_fields: Sequence[str] = ("name",),
                 text_length: int = 64, lowercase: bool = True, image_size: int = 64):
        check_options(label, text_fields, text_length, image_size)
        self._source = source
        self.label, self.text_fields = label, tuple(text_fields)
        self.text_length, self.lowercase, self.image_size = int(text_length), bool(lowercase), int(image_size)

    def __len__(self) -> int:
        return len(self._source)

    def caption(self, example: Mapping) -> str:
        parts = [_as_str(example[f]) for f in self.text_fields]
        text = "; ".join(p for p in parts if p)
        return text.lower() if self.lowercase else text

    def encode(self, texts: Sequence[str]) -> np.ndarray:
        from crossmodal.models import text as text_lib  # pylint: disable=import-outside-toplevel

        return text_lib.encode([t.lower() if self.lowercase else t for t in texts], self.text_length)

    def __getitem__(self, index: int) -> dict[str, np.ndarray]:
        ex = self._source[index]
        image = np.asarray(ex["image"])
        if self.image_size != IMAGE_SHAPE[0]:
            f = IMAGE_SHAPE[0] // self.image_size
            image = np.rint(image.reshape(self.image_size, f, self.image_size, f, 3).mean((1, 3))).astype(np.uint8)
        return {"image": image, "text": self.encode([self.caption(ex)])[0],
                "label": np.asarray(ex[self.label], np.int64)}


def check_options(label, text_fields, text_length, image_size) -> None:
    if label not in LABELS:
        raise ValueError(f"config.data.label={label!r}; valid choices: {LABELS}")
    if not text_fields or any(f not in TEXT_FIELDS for f in text_fields):
        raise ValueError(f"config.data.text_fields={tuple(text_fields)}: a non-empty subset of {TEXT_FIELDS}")
    if int(text_length) < 8:
        raise ValueError(f"config.data.text_length={text_length}: must be >= 8 byte tokens")
    if int(image_size) not in (64, 32, 16):
        raise ValueError(f"config.data.image_size={image_size}: valid choices 64, 32, 16")


def _as_str(value) -> str:
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


# Label names of emoji-datasource 16.0.0 (categories.json order, subcategories used by
# emoji.json); fixed here so that DatasetInfo needs no source files. The builder checks them.
CATEGORIES = (
    "Smileys & Emotion", "People & Body", "Component", "Animals & Nature", "Food & Drink",
    "Travel & Places", "Activities", "Objects", "Symbols", "Flags",
)
SUBCATEGORIES = (
    "face-smiling", "face-affection", "face-tongue", "face-hand", "face-neutral-skeptical",
    "face-sleepy", "face-unwell", "face-hat", "face-glasses", "face-concerned", "face-negative",
    "face-costume", "cat-face", "monkey-face", "heart", "emotion", "hand-fingers-open",
    "hand-fingers-partial", "hand-single-finger", "hand-fingers-closed", "hands", "hand-prop",
    "body-parts", "person", "person-gesture", "person-role", "person-fantasy", "person-activity",
    "person-sport", "person-resting", "family", "person-symbol", "skin-tone", "animal-mammal",
    "animal-bird", "animal-amphibian", "animal-reptile", "animal-marine", "animal-bug",
    "plant-flower", "plant-other", "food-fruit", "food-vegetable", "food-prepared", "food-asian",
    "food-sweet", "drink", "dishware", "place-map", "place-geographic", "place-building",
    "place-religious", "place-other", "transport-ground", "transport-water", "transport-air",
    "hotel", "time", "sky & weather", "event", "award-medal", "sport", "game", "arts & crafts",
    "clothing", "sound", "music", "musical-instrument", "phone", "computer", "light & video",
    "book-paper", "money", "mail", "writing", "office", "lock", "tool", "science", "medical",
    "household", "other-object", "transport-sign", "warning", "arrow", "religion", "zodiac",
    "av-symbol", "gender", "math", "punctuation", "currency", "other-symbol", "keycap", "alphanum",
    "geometric", "flag", "country-flag", "subdivision-flag",
)
