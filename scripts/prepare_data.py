"""Prepares AV-MNIST variants from local sources into a TFDS data_dir and prints what is on disk;
with --verify, recomputes a prepared dataset's content fingerprint and checks it.

    python scripts/prepare_data.py --config pca --config clean --data_dir /tmp/tfds
    python scripts/prepare_data.py --dataset emoji --config held_out_twitter --verify
    python scripts/prepare_data.py --dataset manifest --config <name_digest> --verify

The fingerprint (crossmodal/data/fingerprint.py) is a hash of every decoded example in order,
recorded in the dataset info when the dataset is prepared; --verify reads every example back,
prints the recorded and the recomputed value per split, and exits with status 1 if they differ
(the files changed after preparation) or 2 if none was recorded (prepared before fingerprints:
the recomputed value is printed; prepare again to record it). The same config prepared on two
machines gives the same value when their data agree.

Sources are found by `crossmodal.data.sources.resolve_manual_dir` (--manual_dir >
$CROSSMODAL_MANUAL_DIR > <repo>/../shared/data > download). After preparing, the script reads the
prepared split back and prints split sizes, per-class counts and audio length statistics, so the
numbers in docs/data.md come from the files a training run will read.
"""

from __future__ import annotations

import argparse
import time

import numpy as np
from pathlib import Path


def _dir_size(path) -> int:
    return sum(p.stat().st_size for p in Path(path).rglob("*") if p.is_file())


def summarize(builder) -> dict:
    """Split sizes, per-class counts, audio length quantiles (seconds) and cropped fraction."""
    from crossmodal.data import avmnist  # pylint: disable=g-import-not-at-top

    out = {}
    for split in avmnist.SPLITS:
        source = builder.as_data_source(split=split)
        labels = np.empty(len(source), np.int64)
        lengths = np.empty(len(source), np.int64)
        recordings = set()
        for i in range(len(source)):
            ex = source[i]
            labels[i], lengths[i] = ex["label"], ex["audio_length"]
            recordings.add(ex["audio_id"])
        seconds = lengths / avmnist.SAMPLE_RATE
        out[split] = {
            "num_examples": len(source),
            "per_class": np.bincount(labels, minlength=avmnist.NUM_CLASSES).tolist(),
            "num_recordings": len(recordings),
            "audio_seconds_min_p50_p95_p99_max": np.round(np.percentile(seconds, [0, 50, 95, 99, 100]), 3).tolist(),
            "fraction_cropped_to_1s": float(np.mean(lengths >= avmnist.AUDIO_LENGTH)),
        }
    return out


def source_audio_stats(manual_dir=None) -> dict:
    """Durations of the FSDD recordings themselves, per split (before padding/cropping)."""
    from crossmodal.data import avmnist, sources  # pylint: disable=g-import-not-at-top

    root = sources.resolve_manual_dir(manual_dir)
    if root is None:
        return {}
    paths = sources.locate_manual_sources(root, verify_checksums=False)
    by_split = sources.split_recordings(paths.recordings, avmnist.RECORDING_INDICES)
    out = {}
    for split, ids in by_split.items():
        seconds = np.array([len(sources.read_wav(paths.recordings[a])) for a in ids]) / avmnist.SAMPLE_RATE
        out[split] = {
            "num_recordings": len(ids),
            "seconds_min_p50_p95_p99_max": np.round(np.percentile(seconds, [0, 50, 95, 99, 100]), 3).tolist(),
            "longer_than_1s": int(np.sum(seconds > 1.0)),
        }
    return out


def verify(builder) -> int:
    """Prints recorded vs recomputed fingerprints; 0 if equal, 1 if not, 2 if none recorded."""
    from crossmodal.data import fingerprint  # pylint: disable=g-import-not-at-top

    recorded, computed = fingerprint.recorded(builder), fingerprint.of_builder(builder)
    print(f"fingerprint of {builder.name}/{builder.builder_config.name} ({builder.data_path}):")
    for split in sorted(computed):
        was = (recorded or {}).get(split)
        mark = "ok" if was == computed[split] else ("not recorded" if was is None else "DIFFERS")
        print(f"  {split:10s} {computed[split]}  {mark}" + (f" (recorded {was})" if was and was != computed[split] else ""))
    if recorded is None:
        return 2
    return 0 if recorded == computed else 1


def _builder(dataset: str, name: str, data_dir):
    from crossmodal.data import avmnist, emoji, manifest  # pylint: disable=g-import-not-at-top

    module = {"avmnist": avmnist, "emoji": emoji, "manifest": manifest}[dataset]
    return module.get_builder(name, data_dir=data_dir)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", action="append", help="builder config name, repeatable (default: pca)")
    parser.add_argument("--data_dir", default=None, help="TFDS data_dir (default: $TFDS_DATA_DIR or ~/tensorflow_datasets)")
    parser.add_argument("--manual_dir", default=None, help="source dir with mnist/ and fsdd/recordings/")
    parser.add_argument("--skip_checksums", action="store_true", help="build from modified sources (no sha256 check)")
    parser.add_argument("--no_tfrecord", action="store_true", help="write array_record only (no tfds.load copy)")
    parser.add_argument("--dataset", default="avmnist", choices=("avmnist", "emoji", "manifest"),
                        help="which builder --config names (emoji and manifest: --verify only; "
                        "they are prepared by training or their get_data_source)")
    parser.add_argument("--verify", action="store_true",
                        help="recompute the content fingerprint of each --config and check it")
    args = parser.parse_args(argv)
    if args.dataset != "avmnist" or args.verify:
        status = 0
        for name in args.config or ["pca"]:
            builder = _builder(args.dataset, name, args.data_dir)
            if not builder.is_prepared() and args.dataset == "avmnist":
                builder = _builder_prepared(name, args)
            if not builder.is_prepared():
                raise SystemExit(f"{args.dataset}/{name} is not prepared in {builder.data_dir_root}")
            status = max(status, verify(builder))
        raise SystemExit(status)

    from crossmodal.data import avmnist  # pylint: disable=g-import-not-at-top

    print("source recordings:", source_audio_stats(args.manual_dir))
    for name in args.config or ["pca"]:
        start = time.perf_counter()
        reused = avmnist.get_builder(name, data_dir=args.data_dir).is_prepared()
        builder = avmnist.prepare(
            name,
            data_dir=args.data_dir,
            manual_dir=args.manual_dir,
            verify_checksums=not args.skip_checksums,
            write_tfrecord=False if args.no_tfrecord else None,
        )
        elapsed = time.perf_counter() - start
        formats = sorted({p.name.split(".")[1].split("-")[0] for p in Path(builder.data_path).glob("avmnist-*")})
        print(f"\n== avmnist/{builder.builder_config.name} at {builder.data_path}")
        print(f"prepare: {'reused existing, ' if reused else ''}{elapsed:.1f} s, {_dir_size(builder.data_path) / 2**20:.1f} MiB on disk, formats {formats}")
        print("metadata:", dict(builder.info.metadata))
        for split, stats in summarize(builder).items():
            print(f"{split}: {stats}")
    print("\n(per_class: example counts for labels 0..9)")


def _builder_prepared(name, args):
    from crossmodal.data import avmnist  # pylint: disable=g-import-not-at-top

    return avmnist.prepare(name, data_dir=args.data_dir, manual_dir=args.manual_dir,
                           verify_checksums=not args.skip_checksums,
                           write_tfrecord=False if args.no_tfrecord else None)


if __name__ == "__main__":
    main()
