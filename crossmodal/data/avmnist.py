"""AV-MNIST as a TFDS dataset: each MNIST digit paired with an FSDD recording of the same digit.

Importing this module registers the TFDS builder `avmnist` (class `Avmnist`). After one
`download_and_prepare` (see scripts/prepare_data.py and docs/data.md) a researcher reads it with
`tfds.data_source('avmnist/pca', split='train', data_dir=...)` (array_record, random access,
what grain uses) or `tfds.load('avmnist/pca', data_dir=...)` (tfrecord copy, needs TensorFlow).

Everything that shapes the data lives here and is deterministic: splits (leak-free on both
modalities), pairing (seeded numpy Generator per split and digit), PCA fitted on the train
split only, white noise at an exact per-clip SNR. A subset build (`max_examples_per_split`)
yields exactly the first examples of the full build, so tests run the real code path.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import re
from collections.abc import Mapping

import numpy as np
import tensorflow_datasets as tfds
from etils import epath

from crossmodal.data import avmnist_tasks
from crossmodal.data import fingerprint
from crossmodal.data import sources
from crossmodal.data import tfds_formats

NUM_CLASSES = 10
IMAGE_SHAPE = (28, 28, 1)
SAMPLE_RATE = sources.SAMPLE_RATE
AUDIO_LENGTH = SAMPLE_RATE  # 1.0 s: 99.3% of FSDD clips fit; longer ones end in silence
PCA_KEPT_VARIANCE = 0.25  # CentralNet/MFAS: keep components up to 25% of the energy (>= 75% removed)
# `pca_noisy`: a first calibration (1000 steps); the same examples as 'pca_snr-10'. The study's
# recipe is experiments/avmnist.py's VARIANT / SNR_DB (docs/results.md).
DEFAULT_NOISY_SNR_DB = -10.0
# and 'pca<k>', exactly k components: the papers' "25% of the energy" is not enough to reproduce
# their image-only accuracy with our PCA (docs/results.md#av-mnist-recipe-calibration).
IMAGE_VARIANTS = ("clean", "pca")
_PCA_K_RE = re.compile(r"pca([1-9][0-9]*)")
IMAGE_CHOICES = f"{', '.join(IMAGE_VARIANTS)}, pca<k> (k components, 1 <= k <= {math.prod(IMAGE_SHAPE)})"
SPLITS = ("train", "validation", "test")
SPLIT_SIZES = {"train": 55000, "validation": 5000, "test": 10000}
# MNIST train[:55000] -> train, train[55000:] -> validation, t10k -> test.
VALIDATION_START = 55000
# FSDD's own split is index 0-4 test, 5-49 train; validation takes 5-9 from train.
RECORDING_INDICES = {"train": range(10, 50), "validation": range(5, 10), "test": range(0, 5)}
_SPLIT_CODES = {"train": 0, "validation": 1, "test": 2}  # mixed into the per-example seeds
_INT16_MAX = 32767

log = logging.getLogger(__name__)


# ----------------------------------------------------------------------------- configs


@dataclasses.dataclass
class AvmnistConfig(tfds.core.BuilderConfig):
    """One AV-MNIST variant; every field changes the bytes on disk, so each has its own name.

    task: 'digit' (AV-MNIST: one image and one recording of the same digit) or a task that needs
      binding (crossmodal/data/avmnist_tasks.py: grid2, grid3, match, seq2, seq3).
    image: 'clean', 'pca' (PCA fitted on the train split, keeping PCA_KEPT_VARIANCE) or 'pca<k>'
      (the same PCA keeping exactly k components).
    audio_snr_db: None for clean audio, else white noise at this per-clip SNR in dB.
    noise_seed / pairing_seed: seeds of the noise and of the image-recording pairing.
    max_examples_per_split: keep only the first N examples of each split (fast tests).
    """

    task: str = avmnist_tasks.DIGIT
    image: str = "clean"
    audio_snr_db: float | None = None
    noise_seed: int = 0
    pairing_seed: int = 0
    max_examples_per_split: int | None = None

    def __post_init__(self):
        if self.task not in avmnist_tasks.TASKS:
            raise ValueError(f"AvmnistConfig.task={self.task!r}; valid choices: {', '.join(avmnist_tasks.TASKS)}.")
        k = pca_components(self.image)
        if self.image not in IMAGE_VARIANTS and not (k and k <= math.prod(IMAGE_SHAPE)):
            raise ValueError(
                f"AvmnistConfig.image={self.image!r}; valid choices: {IMAGE_CHOICES}."
            )
        if self.audio_snr_db is not None and not math.isfinite(self.audio_snr_db):
            raise ValueError(
                f"AvmnistConfig.audio_snr_db={self.audio_snr_db!r}; use None (clean) or a finite dB value."
            )
        for field in ("noise_seed", "pairing_seed"):
            value = getattr(self, field)
            if not isinstance(value, int) or value < 0:
                raise ValueError(f"AvmnistConfig.{field}={value!r}; must be a non-negative int.")
        n = self.max_examples_per_split
        if n is not None and (not isinstance(n, int) or n <= 0):
            raise ValueError(f"AvmnistConfig.max_examples_per_split={n!r}; must be None or a positive int.")


def pca_components(image: str) -> int | None:
    """k of an image variant 'pca<k>'; None for 'clean' and 'pca' (kept variance decides)."""
    m = _PCA_K_RE.fullmatch(image) if isinstance(image, str) else None
    return int(m[1]) if m else None


def config_name(
    image="clean", audio_snr_db=None, noise_seed=0, pairing_seed=0, max_examples_per_split=None,
    task=avmnist_tasks.DIGIT,
) -> str:
    """Canonical name of a variant, e.g. 'pca_snr-5', 'clean_n64' or 'grid2_clean'; parsed back by
    `resolve_config`."""
    name = image if task == avmnist_tasks.DIGIT else f"{task}_{image}"
    if audio_snr_db is not None:
        name += f"_snr{float(audio_snr_db):g}"
    if noise_seed:
        name += f"_noiseseed{noise_seed}"
    if pairing_seed:
        name += f"_pairseed{pairing_seed}"
    if max_examples_per_split:
        name += f"_n{max_examples_per_split}"
    return name


_NAME_RE = re.compile(
    rf"^(?:(?P<task>{'|'.join(avmnist_tasks.TASKS[1:])})_)?(?P<image>[a-z]+[0-9]*)(?:_snr(?P<snr>-?[0-9]+(?:\.[0-9]+)?))?(?:_noiseseed(?P<noise_seed>[0-9]+))?"
    r"(?:_pairseed(?P<pairing_seed>[0-9]+))?(?:_n(?P<n>[0-9]+))?$"
)
NAME_GRAMMAR = f"[<{'|'.join(avmnist_tasks.TASKS[1:])}>_]<clean|pca|pca<k>>[_snr<dB>][_noiseseed<int>][_pairseed<int>][_n<int>] (e.g. 'pca_snr-5')"


def _describe(image, audio_snr_db, task=avmnist_tasks.DIGIT, **_) -> str:
    if image == "clean":
        img = "clean MNIST digits"
    elif pca_components(image):
        img = f"MNIST digits rebuilt from the first {pca_components(image)} components of the train-split PCA"
    else:
        img = f"MNIST digits rebuilt from the train-split PCA (up to {PCA_KEPT_VARIANCE:.0%} of the variance)"
    aud = "clean FSDD audio" if audio_snr_db is None else f"FSDD audio + white noise at {audio_snr_db:g} dB"
    what = "" if task == avmnist_tasks.DIGIT else f"{avmnist_tasks.describe(task)}; "
    return f"{what}{img}; {aud}."


BUILDER_CONFIGS = [
    AvmnistConfig(name="clean", description=_describe("clean", None), image="clean"),
    AvmnistConfig(name="pca", description=_describe("pca", None), image="pca"),
    AvmnistConfig(
        name="pca_noisy",
        description=_describe("pca", DEFAULT_NOISY_SNR_DB),
        image="pca",
        audio_snr_db=DEFAULT_NOISY_SNR_DB,
    ),
]
_PREDEFINED = {c.name: c for c in BUILDER_CONFIGS}


def avmnist_config(
    image="clean", audio_snr_db=None, noise_seed=0, pairing_seed=0, max_examples_per_split=None,
    task=avmnist_tasks.DIGIT,
) -> AvmnistConfig:
    """A custom variant, named canonically (the predefined object if it is one of those)."""
    fields = dict(
        task=task,
        image=image,
        audio_snr_db=None if audio_snr_db is None else float(audio_snr_db),
        noise_seed=noise_seed,
        pairing_seed=pairing_seed,
        max_examples_per_split=max_examples_per_split,
    )
    config = AvmnistConfig(name=config_name(**fields), description=_describe(**fields), **fields)  # validates
    return _PREDEFINED.get(config.name, config)


def _parse_name(name: str) -> AvmnistConfig | None:
    m = _NAME_RE.match(name)
    if not m:
        return None
    try:
        AvmnistConfig(name="check", image=m["image"])
    except ValueError:
        return None
    return avmnist_config(
        task=m["task"] or avmnist_tasks.DIGIT,
        image=m["image"],
        audio_snr_db=None if m["snr"] is None else float(m["snr"]),
        noise_seed=int(m["noise_seed"] or 0),
        pairing_seed=int(m["pairing_seed"] or 0),
        max_examples_per_split=int(m["n"]) if m["n"] else None,
    )


def resolve_config(config: str | AvmnistConfig | None) -> AvmnistConfig:
    """Predefined name, canonical custom name, or config object -> AvmnistConfig."""
    return tfds_formats.resolve_config(
        config, AvmnistConfig, _PREDEFINED, Avmnist.DEFAULT_CONFIG_NAME, _parse_name, "AV-MNIST",
        f"Custom names follow {NAME_GRAMMAR}; or build one with "
        "crossmodal.data.avmnist.avmnist_config(image=..., audio_snr_db=...).")


# ----------------------------------------------------------------------------- transforms


@dataclasses.dataclass(frozen=True)
class PCA:
    """Principal subspace of flattened images: mean [D], components [k, D] (rows orthonormal)."""

    mean: np.ndarray
    components: np.ndarray
    explained_variance_ratio: np.ndarray  # all D eigenvalues / their sum, descending


def fit_pca(
    images: np.ndarray, kept_variance: float = PCA_KEPT_VARIANCE, chunk: int = 5000, num_components: int | None = None
) -> PCA:
    """Fits PCA (float64 covariance, chunked) keeping components up to `kept_variance` cumulative share,
    or exactly `num_components` if given."""
    x = images.reshape(len(images), -1)
    n, d = x.shape
    if num_components is not None and not 1 <= num_components <= d:
        raise ValueError(f"fit_pca: num_components={num_components}; must be in 1..{d}.")
    total = np.zeros(d)
    gram = np.zeros((d, d))
    for start in range(0, n, chunk):
        block = x[start : start + chunk].astype(np.float64)
        total += block.sum(0)
        gram += block.T @ block
    mean = total / n
    cov = (gram - n * np.outer(mean, mean)) / (n - 1)
    eigvals, eigvecs = np.linalg.eigh(cov)
    order = np.argsort(eigvals)[::-1]
    eigvals = np.clip(eigvals[order], 0.0, None)
    eigvecs = eigvecs[:, order]
    ratio = eigvals / eigvals.sum()
    # "Up to" kept_variance: the most components whose cumulative share does not exceed it.
    k = num_components or max(1, int(np.searchsorted(np.cumsum(ratio), kept_variance, side="right")))
    components = eigvecs[:, :k].T
    # Fix the sign (largest-magnitude entry positive) so the stored basis is reproducible.
    signs = np.sign(components[np.arange(k), np.abs(components).argmax(1)])
    return PCA(mean=mean, components=components * signs[:, None], explained_variance_ratio=ratio)


def pca_reconstruct(images: np.ndarray, pca: PCA, chunk: int = 10000) -> np.ndarray:
    """Projects onto the kept components and back, then clips to 0..255 and rounds to uint8."""
    x = images.reshape(len(images), -1)
    out = np.empty(x.shape, np.uint8)
    for start in range(0, len(x), chunk):
        centred = x[start : start + chunk].astype(np.float64) - pca.mean
        recon = (centred @ pca.components.T) @ pca.components + pca.mean
        out[start : start + chunk] = np.rint(np.clip(recon, 0, 255)).astype(np.uint8)
    return out.reshape(images.shape)


def fit_to_length(samples: np.ndarray, length: int = AUDIO_LENGTH) -> tuple[np.ndarray, int]:
    """Keeps the first `length` samples (FSDD clips start at speech onset) and zero-pads the end.

    Returns the fixed-length int16 clip and how many of its samples are real (not padding).
    """
    n = min(len(samples), length)
    out = np.zeros(length, np.int16)
    out[:n] = samples[:n]
    return out, n


def add_white_noise(clip: np.ndarray, num_valid: int, snr_db: float, rng: np.random.Generator) -> np.ndarray:
    """Adds Gaussian white noise over the whole clip at exactly `snr_db` w.r.t. the real samples.

    Signal power is the mean square of the first `num_valid` samples; the noise draw is rescaled
    to exactly that power / 10^(snr/10). If the sum would overflow int16, the whole clip is scaled
    down (SNR unchanged) instead of clipped.
    """
    x = clip.astype(np.float64)
    signal_power = np.mean(x[:num_valid] ** 2) if num_valid else 0.0
    noise = rng.standard_normal(len(x))
    noise *= np.sqrt(signal_power / 10 ** (snr_db / 10) / np.mean(noise**2))
    y = x + noise
    peak = np.abs(y).max()
    if peak > _INT16_MAX:
        y *= _INT16_MAX / peak
    return np.rint(y).astype(np.int16)


def pair_recordings(labels: np.ndarray, recordings: list[str], seed: int, split: str) -> np.ndarray:
    """Gives each image a recording of its digit from `recordings`, balanced and seeded.

    Per digit, recordings are used equally often (+-1) in a random order drawn from
    `np.random.default_rng([seed, split, digit])`, so splits and digits are independent.
    """
    by_digit: dict[int, list[str]] = {d: [] for d in range(NUM_CLASSES)}
    for aid in sorted(recordings):
        by_digit[sources.parse_audio_id(aid)[0]].append(aid)
    out = np.empty(len(labels), dtype=object)
    for digit in range(NUM_CLASSES):
        where = np.flatnonzero(labels == digit)
        if not len(where):
            continue
        pool = by_digit[digit]
        if not pool:
            raise sources.SourceError(
                f"No FSDD recording of digit {digit} with index in {RECORDING_INDICES[split]} "
                f"for the {split} split; add the missing recordings."
            )
        rng = np.random.default_rng([seed, _SPLIT_CODES[split], digit])
        choice = rng.permutation(np.resize(rng.permutation(len(pool)), len(where)))
        out[where] = [pool[i] for i in choice]
    return out


def split_images(mnist: Mapping[str, np.ndarray]) -> dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """{split: (images [N,28,28] uint8, labels [N], MNIST index within its source file [N])}."""
    images, labels, v = mnist["train_images"], mnist["train_labels"], VALIDATION_START
    index = np.arange(len(images))
    return {
        "train": (images[:v], labels[:v], index[:v]),
        "validation": (images[v:], labels[v:], index[v:]),
        "test": (mnist["test_images"], mnist["test_labels"], np.arange(len(mnist["test_images"]))),
    }


# ----------------------------------------------------------------------------- builder


def _features(task: str) -> tfds.features.FeaturesDict:
    if task == avmnist_tasks.DIGIT:
        return tfds.features.FeaturesDict(
            {
                "image": tfds.features.Tensor(shape=IMAGE_SHAPE, dtype=np.uint8, encoding="bytes"),
                "audio": tfds.features.Tensor(shape=(AUDIO_LENGTH,), dtype=np.int16, encoding="zlib"),
                "audio_length": tfds.features.Scalar(dtype=np.int32, doc="samples before zero padding"),
                "label": tfds.features.ClassLabel(num_classes=NUM_CLASSES),
                "image_index": tfds.features.Scalar(dtype=np.int64, doc="MNIST index in its idx file"),
                "audio_id": tfds.features.Text(doc="FSDD recording {digit}_{speaker}_{index}"),
            }
        )
    lay = avmnist_tasks.layout(task)
    return tfds.features.FeaturesDict(
        {
            "image": tfds.features.Tensor(shape=lay.image_shape, dtype=np.uint8, encoding="bytes"),
            "audio": tfds.features.Tensor(shape=(lay.clips * AUDIO_LENGTH,), dtype=np.int16, encoding="zlib"),
            "audio_length": tfds.features.Scalar(dtype=np.int32, doc="samples before the final zero padding"),
            "label": tfds.features.ClassLabel(names=lay.class_names),
            "image_digits": tfds.features.Tensor(shape=(lay.cells,), dtype=np.int64, doc="digit per cell, row-major"),
            "image_indices": tfds.features.Tensor(
                shape=(lay.cells,), dtype=np.int64, doc="MNIST index (in its idx file) per cell"
            ),
            "spoken_digits": tfds.features.Tensor(shape=(lay.clips,), dtype=np.int64, doc="in order"),
            "audio_id": tfds.features.Text(doc="FSDD recordings {digit}_{speaker}_{index}, in order, ' '-joined"),
        }
    )


class Avmnist(tfds_formats.PreparedDataSource, tfds.core.GeneratorBasedBuilder):
    """AV-MNIST: MNIST images paired with same-digit FSDD recordings (see module docstring)."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Initial release: clean / pca / pca_noisy, leak-free splits."}
    BUILDER_CONFIGS = BUILDER_CONFIGS
    DEFAULT_CONFIG_NAME = "pca"

    def __init__(
        self, *, config=None, verify_checksums: bool = True, write_tfrecord: bool | None = None, **kwargs
    ):
        """`write_tfrecord`: also write a tfrecord copy for tfds.load (None: if TensorFlow imports)."""
        self._verify_checksums = verify_checksums
        self._write_tfrecord = write_tfrecord
        self._manual_dir = None
        # tfds.data_source(...) asks for file_format='array_record'; on disk that is the
        # alternative format beside tfrecord, which TFDS then refuses as a format change. Reading
        # picks array_record anyway (`as_data_source`), and preparing sets its own format.
        kwargs.pop("file_format", None)
        super().__init__(config=resolve_config(config), **kwargs)

    @tfds.core.utils.classproperty
    @classmethod
    def _checksums_path(cls):  # TFDS-format url checksums live in checksums/, not next to this file
        return epath.Path(sources.URLS_TABLE)

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            features=_features(self.builder_config.task),
            homepage="https://github.com/Jakobovski/free-spoken-digit-dataset",
            citation=(
                "Vielzeuf et al., CentralNet: a Multilayer Approach for Multimodal Fusion (2018); "
                "LeCun et al. 1998 (MNIST); Jackson et al., Free Spoken Digit Dataset v1.0.10."
            ),
            metadata=tfds.core.MetadataDict(),
            disable_shuffling=True,  # stored order = generation order: subsets are prefixes
        )

    def download_and_prepare(self, *, download_dir=None, download_config=None, file_format=None, **kwargs):
        """As TFDS's, but remembers `download_config.manual_dir` (see `sources.resolve_manual_dir`).

        Records are written as array_record (random access, no TensorFlow needed); a tfrecord
        copy is added afterwards (`tfds_formats.add_tfrecord_copy`).
        """
        self._manual_dir = download_config.manual_dir if download_config is not None else None
        kwargs["file_format"] = file_format or "array_record"
        return super().download_and_prepare(
            download_dir=download_dir, download_config=download_config, **kwargs
        )

    def how_to_prepare(self) -> str:
        return (f"Run `python scripts/prepare_data.py --config {self.builder_config.name} --data_dir "
                f"{self.data_dir_root}` or call crossmodal.data.avmnist.get_data_source(...), which prepares.")

    def _split_generators(self, dl_manager):
        cfg: AvmnistConfig = self.builder_config
        manual_dir = sources.resolve_manual_dir(self._manual_dir)
        if manual_dir is not None:
            paths = sources.locate_manual_sources(manual_dir, verify_checksums=self._verify_checksums)
        else:
            paths = sources.download_sources(dl_manager, verify_checksums=self._verify_checksums)
        log.info("AV-MNIST %s: sources from %s", cfg.name, paths.origin)
        splits = split_images(sources.load_mnist(paths.mnist))
        metadata = {
            "task": cfg.task,
            "image": cfg.image,
            "audio_snr_db": cfg.audio_snr_db,
            "noise_seed": cfg.noise_seed,
            "pairing_seed": cfg.pairing_seed,
            "max_examples_per_split": cfg.max_examples_per_split,
            "sample_rate": SAMPLE_RATE,
            "audio_length": AUDIO_LENGTH,
        }
        if cfg.image != "clean":  # train split only: no information from val/test
            pca = fit_pca(splits["train"][0], num_components=pca_components(cfg.image))
            self._save_pca(pca)
            k = len(pca.components)
            metadata.update(pca_components=k, pca_kept_variance=float(pca.explained_variance_ratio[:k].sum()))
        self.info.metadata.update(metadata)
        recs = sources.split_recordings(paths.recordings, RECORDING_INDICES)
        n = cfg.max_examples_per_split
        generators = {}
        if cfg.task != avmnist_tasks.DIGIT:
            for split in SPLITS:
                images, labels, indices = splits[split]
                if cfg.image != "clean":  # every image of the split: distractors come from all of it
                    images = pca_reconstruct(images, pca)
                generators[split] = self._task_examples(split, images, labels, indices, recs[split], paths)
            return generators
        for split in SPLITS:
            images, labels, indices = splits[split]
            audio_ids = pair_recordings(labels, recs[split], cfg.pairing_seed, split)  # before subsetting
            images, labels, indices, audio_ids = images[:n], labels[:n], indices[:n], audio_ids[:n]
            if cfg.image != "clean":
                images = pca_reconstruct(images, pca)
            # Decode every needed wav now, so a bad file fails before anything is written.
            clips = {a: fit_to_length(sources.read_wav(paths.recordings[a])) for a in sorted(set(audio_ids))}
            generators[split] = self._generate_examples(split, images, labels, indices, audio_ids, clips)
        return generators

    def _generate_examples(self, split, images, labels, indices, audio_ids, clips):
        """Yields (MNIST index, example) in split order; noise seeded per (noise_seed, split, index)."""
        cfg: AvmnistConfig = self.builder_config
        for image, label, index, aid in zip(images, labels, indices, audio_ids):
            clip, num_valid = clips[aid]
            if cfg.audio_snr_db is not None:
                rng = np.random.default_rng([cfg.noise_seed, _SPLIT_CODES[split], int(index)])
                clip = add_white_noise(clip, num_valid, cfg.audio_snr_db, rng)
            yield int(index), {
                "image": image[..., None],
                "audio": clip,
                "audio_length": num_valid,
                "label": int(label),
                "image_index": int(index),
                "audio_id": aid,
            }

    def _task_examples(self, split, images, labels, indices, recordings, paths):
        """Draws a binding task's examples for the whole split, then composes the first n
        (avmnist_tasks); noise seeded per (noise_seed, split, example, clip)."""
        cfg: AvmnistConfig = self.builder_config
        lay = avmnist_tasks.layout(cfg.task)
        d = avmnist_tasks.draw(cfg.task, labels, cfg.pairing_seed, _SPLIT_CODES[split])
        spoken_ids = pair_recordings(d.spoken.ravel(), recordings, cfg.pairing_seed, split).reshape(d.spoken.shape)
        n = cfg.max_examples_per_split or len(labels)
        rows, spoken, label, spoken_ids = d.image_rows[:n], d.spoken[:n], d.label[:n], spoken_ids[:n]
        # Decode every needed wav now, so a bad file fails before anything is written.
        clips = {a: fit_to_length(sources.read_wav(paths.recordings[a])) for a in sorted(set(spoken_ids.ravel()))}
        return self._generate_task_examples(split, lay, images, labels, indices, rows, spoken, label, spoken_ids, clips)

    def _generate_task_examples(self, split, lay, images, labels, indices, rows, spoken, label, spoken_ids, clips):
        cfg: AvmnistConfig = self.builder_config
        for i in range(len(rows)):
            audio = []
            for position, aid in enumerate(spoken_ids[i]):
                clip, num_valid = clips[aid]
                if cfg.audio_snr_db is not None:
                    rng = np.random.default_rng([cfg.noise_seed, _SPLIT_CODES[split], i, position])
                    clip = add_white_noise(clip, num_valid, cfg.audio_snr_db, rng)
                audio.append(clip)
            yield i, {
                "image": avmnist_tasks.compose(images[rows[i]], lay),
                "audio": np.concatenate(audio),
                "audio_length": (lay.clips - 1) * AUDIO_LENGTH + clips[spoken_ids[i][-1]][1],
                "label": int(label[i]),
                "image_digits": labels[rows[i]].astype(np.int64),
                "image_indices": indices[rows[i]].astype(np.int64),
                "spoken_digits": spoken[i].astype(np.int64),
                "audio_id": " ".join(spoken_ids[i]),
            }

    def _save_pca(self, pca: PCA) -> None:
        """Stores the fitted basis beside the records (np.save is byte-deterministic, npz is not)."""
        for name in ("mean", "components", "explained_variance_ratio"):
            with (epath.Path(self.data_dir) / f"pca_{name}.npy").open("wb") as f:  # gs:// too
                np.save(f, getattr(pca, name))

    def _download_and_prepare(self, dl_manager, download_config):
        super()._download_and_prepare(dl_manager, download_config)
        fingerprint.record(self.info)  # of the array_record files, before any tfrecord copy
        write = tfds_formats.tensorflow_available() if self._write_tfrecord is None else self._write_tfrecord
        if write:
            tfds_formats.add_tfrecord_copy(self.info)


# ----------------------------------------------------------------------------- loading


def get_builder(config: str | AvmnistConfig = "pca", *, data_dir=None, **builder_kwargs) -> Avmnist:
    return Avmnist(config=config, data_dir=data_dir, **builder_kwargs)


def prepare(config: str | AvmnistConfig = "pca", *, data_dir=None, manual_dir=None, **builder_kwargs):
    """Prepares the variant once (no-op if already on disk) and returns its builder."""
    return tfds_formats.prepare_once(lambda: get_builder(config, data_dir=data_dir, **builder_kwargs),
                                     manual_dir)


def get_data_source(split: str, *, config: str | AvmnistConfig = "pca", data_dir=None, manual_dir=None):
    """Random-access source of one split (len, [i] -> dict of numpy arrays), preparing it if needed.

    Examples hold image uint8 [28,28,1], audio int16 [8000], audio_length, label int64,
    image_index, audio_id (bytes); the input pipeline converts audio to float32 in [-1, 1].
    """
    if split not in SPLITS:
        raise ValueError(f"Unknown AV-MNIST split {split!r}; valid: {', '.join(SPLITS)}.")
    return prepare(config, data_dir=data_dir, manual_dir=manual_dir).as_data_source(split=split)
