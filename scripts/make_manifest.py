"""Writes manifests (crossmodal/data/manifest.py) for the built-in sources, so that training on a
manifest can be compared with training on the dedicated builders (docs/data.md).

    python scripts/make_manifest.py --source emoji --split held_out_twitter --out /tmp/emoji_manifest
    python scripts/make_manifest.py --source avmnist --out /tmp/avmnist_manifest [--subset 64]

emoji: <out>/emoji_<split>.csv (image: the PNG in the source directory, text: the entry's name,
label: its category, split: as the emoji builder assigns it) and <out>/emoji_classes.txt (the
categories in the builder's order, so the label indices agree). avmnist: the clean variant,
<out>/avmnist_clean[_n<k>].csv with the MNIST digits written as grey PNGs under <out>/mnist/
(image), the paired FSDD recording (audio), the digit (label) and the split; rows in the
builder's order and pairing, and with --subset the first k of every split (the builder's
`clean_n<k>`). The source directory is found as the builders find it (--manual_dir,
$CROSSMODAL_MANUAL_DIR, <repo>/../shared/data).
"""
from __future__ import annotations

import argparse
import csv
from pathlib import Path

import numpy as np


def _source_root(manual_dir):
    from crossmodal.data import sources  # pylint: disable=import-outside-toplevel

    root = sources.resolve_manual_dir(manual_dir)
    if root is None:
        raise SystemExit("make_manifest: no source directory found; pass --manual_dir "
                         "(the directory holding emoji/, mnist/ and fsdd/)")
    return root


def emoji_manifest(out: Path, split: str = "held_out_twitter", manual_dir=None) -> tuple[Path, Path]:
    """(manifest, classes file) of one emoji split layout."""
    from crossmodal.data import emoji  # pylint: disable=import-outside-toplevel

    cfg = emoji.resolve_config(split)
    files = emoji.locate_sources(_source_root(manual_dir) / emoji.SUBDIR)
    meta = emoji.read_metadata(files["emoji.json"], files["categories.json"])
    splits = emoji.assign_splits(meta, cfg.kind, cfg.split_seed)
    out.mkdir(parents=True, exist_ok=True)
    classes = out / "emoji_classes.txt"
    classes.write_text("".join(f"{c}\n" for c in meta.categories), encoding="utf-8")
    path = out / f"emoji_{cfg.name}.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["image", "text", "label", "split"])
        for s in emoji.SPLITS:
            style = cfg.style if s == "train" else cfg.test_style
            for i in splits[s]:
                e = meta.entries[i]
                w.writerow([files[f"{style}-64/{e['image']}"], e["name"], e["category"], s])
    return path, classes


def avmnist_manifest(out: Path, subset: int | None = None, manual_dir=None) -> Path:
    """The clean AV-MNIST variant (optionally the first `subset` rows of every split)."""
    from PIL import Image  # pylint: disable=import-outside-toplevel

    from crossmodal.data import avmnist, sources  # pylint: disable=import-outside-toplevel

    paths = sources.locate_manual_sources(_source_root(manual_dir))
    splits = avmnist.split_images(sources.load_mnist(paths.mnist))
    recs = sources.split_recordings(paths.recordings, avmnist.RECORDING_INDICES)
    (out / "mnist").mkdir(parents=True, exist_ok=True)
    path = out / f"avmnist_clean{f'_n{subset}' if subset else ''}.csv"
    with path.open("w", newline="", encoding="utf-8") as f:
        w = csv.writer(f)
        w.writerow(["image", "audio", "label", "split"])
        for s in avmnist.SPLITS:
            images, labels, indices = splits[s]
            audio_ids = avmnist.pair_recordings(labels, recs[s], 0, s)  # before subsetting
            for image, label, index, aid in list(zip(images, labels, indices, audio_ids))[:subset]:
                png = out / "mnist" / f"{s}_{int(index):05d}.png"
                if not png.exists():
                    Image.fromarray(np.asarray(image, np.uint8), mode="L").save(png)
                w.writerow([png.relative_to(out), paths.recordings[aid], int(label), s])
    return path


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--source", choices=("emoji", "avmnist"), required=True)
    parser.add_argument("--out", required=True, help="directory for the manifest (and PNGs)")
    parser.add_argument("--split", default="held_out_twitter", help="emoji split layout")
    parser.add_argument("--subset", type=int, default=0, help="avmnist: first k rows per split")
    parser.add_argument("--manual_dir", default=None, help="the source directory")
    args = parser.parse_args(argv)
    out = Path(args.out).absolute()
    if args.source == "emoji":
        path, classes = emoji_manifest(out, args.split, args.manual_dir)
        print(f"{path}\n{classes}\ntrain with:\n  python -m crossmodal.main --config=experiments/"
              f"manifest.py:path={path},classes={classes.name},recipe=emoji --workdir=runs/emoji_manifest")
    else:
        path = avmnist_manifest(out, args.subset or None, args.manual_dir)
        print(f"{path}\ntrain with:\n  python -m crossmodal.main --config=experiments/manifest.py:"
              f"path={path},recipe=avmnist --workdir=runs/avmnist_manifest")


if __name__ == "__main__":
    main()
