"""Emoji builder on the real source files: counts, splits disjoint as documented, image/text
agreement against the PNGs read here with PIL, errors for bad sources, and the model examples.

The sources are located with the same rule as the builder (sources.resolve_manual_dir); if
they are absent the tests fail with instructions rather than skip.
"""

from __future__ import annotations

import collections
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from crossmodal.data import datasets, emoji, sources
from crossmodal.models import text as text_lib

ROOT = sources.resolve_manual_dir()


@pytest.fixture(scope="module")
def emoji_dir() -> Path:
    if ROOT is None or not (ROOT / emoji.SUBDIR).is_dir():
        pytest.fail("emoji sources not found: set CROSSMODAL_MANUAL_DIR to a directory with "
                    "emoji/{emoji.json,twitter-64,google-64}, or provide <repo>/../shared/data.")
    return ROOT / emoji.SUBDIR


@pytest.fixture(scope="module")
def entries(emoji_dir) -> dict[str, dict]:
    return {e["unified"]: e for e in json.loads((emoji_dir / "emoji.json").read_text())}


@pytest.fixture(scope="module")
def built(tmp_path_factory, emoji_dir) -> dict[str, dict[str, list[dict]]]:
    """{config name: {split: examples}} for one held-out and one cross-style build."""
    data_dir = tmp_path_factory.mktemp("emoji_tfds")
    out = {}
    for name in ("held_out_twitter", "twitter_to_google"):
        emoji.prepare(name, data_dir=data_dir, write_tfrecord=False)
        out[name] = {}
        for split in emoji.SPLITS:
            src = emoji.get_data_source(split, config=name, data_dir=data_dir)
            out[name][split] = [src[i] for i in range(len(src))]
    out["data_dir"] = data_dir
    return out


def _ids(examples):
    return [ex["id"].decode() for ex in examples]


def _reference_png(path: Path) -> np.ndarray:
    """Alpha over white, as PIL composites it (independent of emoji.read_png's arithmetic)."""
    rgba = Image.open(path).convert("RGBA")
    white = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
    return np.asarray(Image.alpha_composite(white, rgba).convert("RGB"))


def test_held_out_counts_and_disjoint_concepts(built, entries):
    splits = built["held_out_twitter"]
    ids = {s: _ids(splits[s]) for s in emoji.SPLITS}
    assert sum(len(v) for v in ids.values()) == len(entries) == 1911
    for a in emoji.SPLITS:  # no entry in two splits, none twice
        assert len(set(ids[a])) == len(ids[a])
        for b in emoji.SPLITS:
            if a < b:
                assert not set(ids[a]) & set(ids[b]), (a, b)
    # Stratified: every subcategory keeps training entries; each subcategory's test share is
    # round(20%) unless that would leave training empty.
    by_sub = collections.Counter(e["subcategory"] for e in entries.values())
    test_by_sub = collections.Counter(entries[i]["subcategory"] for i in ids["test"])
    train_subs = {entries[i]["subcategory"] for i in ids["train"]}
    assert train_subs == set(by_sub)
    for sub, n in by_sub.items():
        if n >= 5:
            assert test_by_sub[sub] == round(0.2 * n), sub
    assert 0.18 < len(ids["test"]) / 1911 < 0.22 and 0.08 < len(ids["validation"]) / 1911 < 0.12
    assert {ex["style"] for s in emoji.SPLITS for ex in splits[s]} == {emoji.STYLES.index("twitter")}


def test_cross_style_trains_on_one_style_and_tests_on_the_other(built, entries):
    splits = built["twitter_to_google"]
    ids = {s: _ids(splits[s]) for s in emoji.SPLITS}
    assert sorted(ids["train"]) == sorted(entries)  # every concept, drawn by Twitter
    assert not set(ids["validation"]) & set(ids["test"])
    assert sorted(ids["validation"] + ids["test"]) == sorted(entries)  # every concept, by Google
    styles = {s: {emoji.STYLES[ex["style"]] for ex in splits[s]} for s in emoji.SPLITS}
    assert styles == {"train": {"twitter"}, "validation": {"google"}, "test": {"google"}}


def test_images_names_and_labels_agree_with_the_sources(built, entries, emoji_dir):
    categories = json.loads((emoji_dir / "categories.json").read_text())
    rng = np.random.default_rng(0)
    for name, splits in built.items():
        if name == "data_dir":
            continue
        for split, examples in splits.items():
            for k in rng.choice(len(examples), 12, replace=False):
                ex = examples[k]
                e = entries[ex["id"].decode()]
                style = emoji.STYLES[ex["style"]]
                np.testing.assert_array_equal(ex["image"], _reference_png(emoji_dir / f"{style}-64" / e["image"]))
                assert ex["name"].decode() == e["name"]
                assert ex["short_names"].decode() == " ".join(e["short_names"])
                assert emoji.CATEGORIES[ex["category"]] == e["category"]
                assert emoji.SUBCATEGORIES[ex["subcategory"]] == e["subcategory"]
                assert e["subcategory"] in categories[e["category"]]
    # The two drawings of one entry differ (otherwise cross-style would measure nothing).
    twitter = {ex["id"]: ex["image"] for ex in built["twitter_to_google"]["train"]}
    google = {ex["id"]: ex["image"] for ex in built["twitter_to_google"]["test"]}
    same = sum(np.array_equal(twitter[i], google[i]) for i in google)
    assert same < 0.05 * len(google)


def test_split_seed_changes_the_split_and_is_reproducible(emoji_dir):
    files = emoji.locate_sources(emoji_dir, verify_checksums=False)
    meta = emoji.read_metadata(files["emoji.json"], files["categories.json"])
    a = emoji.assign_splits(meta, "held_out", 0)
    b = emoji.assign_splits(meta, "held_out", 0)
    c = emoji.assign_splits(meta, "held_out", 1)
    assert all(np.array_equal(a[s], b[s]) for s in emoji.SPLITS)
    assert not np.array_equal(a["test"], c["test"]) and len(a["test"]) == len(c["test"])
    assert emoji.resolve_config("held_out_google_seed1").split_seed == 1
    assert emoji.resolve_config("google_to_twitter").test_style == "twitter"


def test_bad_config_names_list_the_choices():
    for bad in ("held_out_apple", "twitter_to_twitter", "cross_style", "held_out_twitter_seed01"):
        with pytest.raises(ValueError, match="Predefined: held_out_twitter"):
            emoji.resolve_config(bad)
    for kind in emoji.KINDS:  # the style is checked before anything derives from it
        with pytest.raises(ValueError, match="EmojiConfig.style='apple'; valid choices"):
            emoji.emoji_config(kind=kind, style="apple")
    with pytest.raises(ValueError, match="seed 0 has no suffix"):
        emoji.resolve_config("held_out_twitter_seed0")


def _copy_sources(emoji_dir: Path, dst: Path, files: list[str]) -> Path:
    """A manual dir of symlinks to the real files, except `files`, which are real copies."""
    root = dst / "data" / emoji.SUBDIR
    for rel in sources.load_checksum_table(emoji.CHECKSUMS):
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        if rel in files:
            shutil.copy(emoji_dir / rel, root / rel)
        else:
            (root / rel).symlink_to(emoji_dir / rel)
    return dst / "data"


def test_missing_and_corrupt_sources_are_named(tmp_path, emoji_dir):
    png = "google-64/1f600.png"
    manual = _copy_sources(emoji_dir, tmp_path, [png])
    target = manual / emoji.SUBDIR / png
    target.write_bytes(target.read_bytes()[:100])  # truncated
    builder = emoji.Emoji(config="held_out_google", data_dir=tmp_path / "tfds", write_tfrecord=False)
    with pytest.raises(sources.SourceError, match=r"(?s)1 corrupt emoji source file.*1f600\.png"):
        builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual))
    # Without checksums the truncated PNG itself is refused, by name.
    with pytest.raises(sources.SourceError, match=r"1f600\.png: not a readable PNG"):
        emoji.read_png(target)
    target.unlink()
    with pytest.raises(sources.SourceError, match=r"1 missing:\n.*1f600\.png"):
        emoji.locate_sources(manual / emoji.SUBDIR)
    assert not emoji.get_builder("held_out_google", data_dir=tmp_path / "tfds").is_prepared()


def test_download_branch_maps_the_npm_packages(tmp_path, emoji_dir):
    """The npm tarballs' layout (package/emoji.json, package/img/<style>/64/*.png), faked with
    symlinks to the shared files: the same files, checked against the same table."""
    extracted = {}
    for style in emoji.STYLES:
        pkg = tmp_path / style / "package"
        (pkg / "img" / style).mkdir(parents=True)
        (pkg / "img" / style / "64").symlink_to(emoji_dir / f"{style}-64")
        for meta in ("emoji.json", "categories.json"):
            (pkg / meta).symlink_to(emoji_dir / meta)
        extracted[style] = tmp_path / style

    class FakeDownloadManager:
        def download_and_extract(self, urls):
            assert urls == emoji.NPM_URLS
            return extracted

    files = emoji.download_sources(FakeDownloadManager())
    assert files.keys() == emoji.locate_sources(emoji_dir, verify_checksums=False).keys()
    assert set(emoji.Emoji.url_infos) == set(emoji.NPM_URLS.values())


def test_model_examples_text_labels_and_image_size(built):
    data_dir = built["data_dir"]
    source = emoji.get_data_source("test", config="held_out_twitter", data_dir=data_dir)
    raw = source[3]
    ex = emoji.ModelExamples(source, label="subcategory", text_fields=("name", "short_names"),
                             image_size=32)[3]
    assert text_lib.decode(ex["text"]) == f"{raw['name'].decode()}; {raw['short_names'].decode()}".lower()
    assert ex["label"] == raw["subcategory"]
    expected = raw["image"].astype(np.float64).reshape(32, 2, 32, 2, 3).mean((1, 3))
    np.testing.assert_array_equal(ex["image"], np.rint(expected).astype(np.uint8))
    config = {"name": "emoji", "builder_config": "held_out_twitter", "data_dir": str(data_dir),
              "label": "subcategory"}
    info = datasets.dataset_info(config)
    assert info.modalities == ("image", "text") and info.num_classes == 99
    assert info.class_names[0] == "face-smiling" and sum(info.split_sizes.values()) == 1911
    ids = datasets.class_name_tokens(config, ["Flags"])
    assert text_lib.decode(ids[0]) == "flags"
    with pytest.raises(ValueError, match="config.data.label='colour'"):
        datasets.check_config({**config, "label": "colour"})


def test_prepare_once_takes_a_concurrent_build_as_done():
    """The second of two concurrent builds fails to rename its directory (FileExistsError);
    prepare_once then returns the first one's prepared copy, and re-raises if there is none."""
    from crossmodal.data import tfds_formats  # pylint: disable=import-outside-toplevel

    class Builder:
        def __init__(self, prepared):
            self.prepared = prepared

        def is_prepared(self):
            return self.prepared

        def download_and_prepare(self, download_config):
            raise FileExistsError("Destination .../1.0.0 already exists.")

    made = iter([Builder(False), Builder(True)])
    assert tfds_formats.prepare_once(lambda: next(made)).prepared
    made = iter([Builder(False), Builder(False)])
    with pytest.raises(FileExistsError):
        tfds_formats.prepare_once(lambda: next(made))


def test_tfds_data_source_reads_a_build_with_its_tfrecord_copy(tmp_path, built):
    """With the tfrecord copy (primary format on disk), tfds.data_source's request for
    array_record used to fail as a file-format change."""
    emoji.prepare("held_out_twitter", data_dir=tmp_path, write_tfrecord=True)
    src = tfds.data_source("emoji/held_out_twitter", split="test", data_dir=tmp_path)
    assert _ids([src[i] for i in range(len(src))]) == _ids(built["held_out_twitter"]["test"])
