"""AV-MNIST builder on the real source files (small subsets, so the file runs in well under a minute).

The sources are located with the same rule as the builder (sources.resolve_manual_dir); if they
are absent the tests fail with instructions rather than skip. References are independent of the
code under test where possible: MNIST parsed here with numpy, wavs read with soundfile, PCA from
scikit-learn.
"""

from __future__ import annotations

import gzip
import io
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
import tensorflow_datasets as tfds

from crossmodal.data import avmnist, sources, tfds_formats

N = 40  # examples per split in the subset builds
SNR_DB = 3.0
MANUAL_DIR = sources.resolve_manual_dir()


@pytest.fixture(scope="module")
def manual_dir() -> Path:
    if MANUAL_DIR is None:
        pytest.fail(
            "AV-MNIST sources not found: set CROSSMODAL_MANUAL_DIR to a directory with mnist/*.gz "
            "and fsdd/recordings/*.wav, or provide <repo>/../shared/data (see docs/data.md)."
        )
    return MANUAL_DIR


def _build(data_dir, config, manual_dir, **builder_kwargs) -> avmnist.Avmnist:
    builder = avmnist.Avmnist(config=config, data_dir=data_dir, **builder_kwargs)
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
    return builder


def _read_all(builder) -> dict[str, list[dict]]:
    out = {}
    for split in avmnist.SPLITS:
        src = tfds.data_source(f"avmnist/{builder.builder_config.name}", split=split, data_dir=builder.data_dir_root)
        out[split] = [src[i] for i in range(len(src))]
    return out


def _mnist_reference(manual_dir) -> dict[str, np.ndarray]:
    """MNIST parsed directly (fixed 16/8-byte idx headers), independent of sources.read_idx."""
    out = {}
    for part, prefix in (("train", "train"), ("test", "t10k")):
        raw = gzip.open(manual_dir / "mnist" / f"{prefix}-images-idx3-ubyte.gz").read()
        out[f"{part}_images"] = np.frombuffer(raw, np.uint8, offset=16).reshape(-1, 28, 28)
        out[f"{part}_labels"] = np.frombuffer(gzip.open(manual_dir / "mnist" / f"{prefix}-labels-idx1-ubyte.gz").read(), np.uint8, offset=8)
    return out


def _wav_reference(manual_dir, audio_id) -> tuple[np.ndarray, int]:
    x, rate = sf.read(manual_dir / "fsdd" / "recordings" / f"{audio_id}.wav", dtype="int16")
    assert rate == 8000
    n = min(len(x), 8000)
    return np.pad(x[:n], (0, 8000 - n)), n


def _source_image(mnist, split, index):
    return mnist["test_images" if split == "test" else "train_images"][index]


def _source_label(mnist, split, index):
    return int(mnist["test_labels" if split == "test" else "train_labels"][index])


def _make_manual_dir(root: Path, real: Path, replace: dict[str, bytes | None] | None = None) -> Path:
    """A manual dir of symlinks to the real sources, with some files replaced (bytes) or removed (None)."""
    replace = replace or {}
    for rel in sources.load_checksum_table():
        dst = root / rel
        dst.parent.mkdir(parents=True, exist_ok=True)
        if rel in replace:
            if replace[rel] is not None:
                dst.write_bytes(replace[rel])
        else:
            dst.symlink_to(real / rel)
    for rel, data in replace.items():  # extra files not in the table
        if data is not None and not (root / rel).exists():
            (root / rel).parent.mkdir(parents=True, exist_ok=True)
            (root / rel).write_bytes(data)
    return root


def _wav_bytes(samples: np.ndarray, rate: int) -> bytes:
    buf = io.BytesIO()
    sf.write(buf, samples, rate, format="WAV", subtype="PCM_16")
    return buf.getvalue()


def _assert_nothing_loadable(data_dir: Path, config) -> None:
    assert not list(Path(data_dir).rglob("dataset_info.json"))
    assert not [p for p in Path(data_dir).rglob("*") if "incomplete" in p.name]
    assert not avmnist.Avmnist(config=config, data_dir=data_dir).is_prepared()
    with pytest.raises(FileNotFoundError, match="is not prepared in .*prepare_data.py"):
        tfds.data_source(f"avmnist/{avmnist.resolve_config(config).name}", split="train", data_dir=data_dir, download=False)


# ----------------------------------------------------------------------------- builds


NOISY = avmnist.avmnist_config(image="pca", audio_snr_db=SNR_DB, max_examples_per_split=N)
CLEAN = avmnist.avmnist_config(image="clean", max_examples_per_split=N)


@pytest.fixture(scope="module")
def noisy(tmp_path_factory, manual_dir):
    return _build(tmp_path_factory.mktemp("noisy"), NOISY, manual_dir, write_tfrecord=False)


@pytest.fixture(scope="module")
def noisy_examples(noisy):
    return _read_all(noisy)


@pytest.fixture(scope="module")
def clean_source_dir(tmp_path_factory, manual_dir):
    """Prepared through get_data_source, the entry point the training code uses."""
    data_dir = tmp_path_factory.mktemp("clean")
    src = avmnist.get_data_source("train", config=CLEAN, data_dir=data_dir, manual_dir=manual_dir)
    assert len(src) == N
    return data_dir


@pytest.fixture(scope="module")
def mnist(manual_dir):
    return _mnist_reference(manual_dir)


# ----------------------------------------------------------------------------- content


def test_features_splits_and_provenance(noisy, noisy_examples):
    assert {s: noisy.info.splits[s].num_examples for s in avmnist.SPLITS} == {s: N for s in avmnist.SPLITS}
    starts = {"train": 0, "validation": avmnist.VALIDATION_START, "test": 0}
    for split, examples in noisy_examples.items():
        # A subset is the prefix of the full split, in MNIST order.
        assert [int(e["image_index"]) for e in examples] == list(range(starts[split], starts[split] + N))
        for e in examples:
            assert e["image"].dtype == np.uint8 and e["image"].shape == (28, 28, 1)
            assert e["audio"].dtype == np.int16 and e["audio"].shape == (8000,)
            assert 0 < e["audio_length"] <= 8000


def test_image_audio_and_mnist_labels_agree(noisy_examples, mnist):
    for split, examples in noisy_examples.items():
        for e in examples:
            digit, _, _ = sources.parse_audio_id(e["audio_id"].decode())
            assert digit == e["label"] == _source_label(mnist, split, e["image_index"])


def test_clean_variant_is_the_raw_sources(clean_source_dir, manual_dir, mnist):
    src = {s: tfds.data_source(f"avmnist/{CLEAN.name}", split=s, data_dir=clean_source_dir) for s in avmnist.SPLITS}
    for split in avmnist.SPLITS:
        for i in range(N):
            e = src[split][i]
            np.testing.assert_array_equal(e["image"][..., 0], _source_image(mnist, split, e["image_index"]))
            ref, n = _wav_reference(manual_dir, e["audio_id"].decode())
            np.testing.assert_array_equal(e["audio"], ref)
            assert e["audio_length"] == n
    # Random-access sources go to grain worker processes: they must survive pickling.
    restored = pickle.loads(pickle.dumps(src["test"]))
    np.testing.assert_array_equal(restored[5]["audio"], src["test"][5]["audio"])


def test_recordings_never_shared_between_splits(noisy_examples, manual_dir):
    paths = sources.locate_manual_sources(manual_dir, verify_checksums=False)
    by_split = sources.split_recordings(paths.recordings, avmnist.RECORDING_INDICES)
    mnist_labels = _mnist_reference(manual_dir)
    used = {}
    for split, (_, labels, _) in avmnist.split_images(mnist_labels).items():
        full = avmnist.pair_recordings(labels, by_split[split], seed=0, split=split)
        used[split] = set(full)
        # Every recording of the split is used, each equally often (+-1) within its digit.
        assert used[split] == set(by_split[split])
        for digit in range(10):
            counts = np.unique(full[labels == digit], return_counts=True)[1]
            assert counts.max() - counts.min() <= 1
        # The built subset is the prefix of this full pairing.
        assert [e["audio_id"].decode() for e in noisy_examples[split]] == list(full[:N])
        indices = {sources.parse_audio_id(a)[2] for a in used[split]}
        assert indices <= set(avmnist.RECORDING_INDICES[split])
    assert not used["train"] & used["validation"]
    assert not used["train"] & used["test"]
    assert not used["validation"] & used["test"]
    assert sum(len(u) for u in used.values()) == 3000


def test_pca_fitted_on_train_split_only(noisy, mnist):
    from sklearn.decomposition import PCA as SkPCA

    data = Path(noisy.data_path)
    components = np.load(data / "pca_components.npy")
    ratio = np.load(data / "pca_explained_variance_ratio.npy")
    k = len(components)
    assert np.cumsum(ratio)[k - 1] <= avmnist.PCA_KEPT_VARIANCE < np.cumsum(ratio)[k]
    assert noisy.info.metadata["pca_components"] == k

    def projector(c):
        return c.T @ c

    train = mnist["train_images"][: avmnist.VALIDATION_START].reshape(-1, 784).astype(np.float64)
    ref = SkPCA(n_components=k, svd_solver="covariance_eigh").fit(train)
    np.testing.assert_allclose(projector(components), projector(ref.components_), atol=1e-8)
    np.testing.assert_allclose(ratio[:k], ref.explained_variance_ratio_, rtol=1e-8)
    np.testing.assert_allclose(np.load(data / "pca_mean.npy"), ref.mean_, rtol=1e-12)
    with_test = np.concatenate([train, mnist["test_images"].reshape(-1, 784)])
    leaky = SkPCA(n_components=k, svd_solver="covariance_eigh").fit(with_test)
    assert np.abs(projector(components) - projector(leaky.components_)).max() > 1e-4


def test_pca_k_keeps_exactly_k_components(tmp_path, manual_dir, mnist):
    from sklearn.decomposition import PCA as SkPCA

    config = avmnist.resolve_config(f"pca5_n{N}")
    assert (config.image, avmnist.pca_components(config.image)) == ("pca5", 5)
    builder = _build(tmp_path, config, manual_dir, write_tfrecord=False)
    components = np.load(Path(builder.data_path) / "pca_components.npy")
    assert components.shape == (5, 784) and builder.info.metadata["pca_components"] == 5
    ratio = np.load(Path(builder.data_path) / "pca_explained_variance_ratio.npy")
    assert ratio[:5].sum() > avmnist.PCA_KEPT_VARIANCE  # more than the 25%-energy variant keeps
    train = mnist["train_images"][: avmnist.VALIDATION_START].reshape(-1, 784).astype(np.float64)
    ref = SkPCA(n_components=5, svd_solver="covariance_eigh").fit(train)
    np.testing.assert_allclose(components.T @ components, ref.components_.T @ ref.components_, atol=1e-8)
    e = _read_all(builder)["train"][0]
    x = _source_image(mnist, "train", e["image_index"]).reshape(-1).astype(np.float64)
    want = np.clip(np.rint(ref.mean_ + (x - ref.mean_) @ components.T @ components), 0, 255)
    assert np.abs(e["image"].reshape(-1) - want).max() <= 1
    for bad in ("pca0", "pca785", "pcax", "pca05"):
        with pytest.raises(ValueError, match=r"valid choices: clean, pca, pca<k> \(k components, 1 <= k <= 784\)"):
            avmnist.avmnist_config(image=bad)
    with pytest.raises(ValueError, match="num_components=785"):
        avmnist.fit_pca(np.zeros((2, 28, 28)), num_components=785)


def test_pca_images_match_reference_reconstruction(noisy, noisy_examples, mnist):
    data = Path(noisy.data_path)
    c, mean = np.load(data / "pca_components.npy"), np.load(data / "pca_mean.npy")
    for split, examples in noisy_examples.items():
        for e in examples:
            x = _source_image(mnist, split, e["image_index"]).reshape(-1).astype(np.float64)
            ref = np.clip(np.rint(mean + (x - mean) @ c.T @ c), 0, 255)
            got = e["image"].reshape(-1).astype(np.float64)
            assert np.abs(got - ref).max() <= 1  # rounding ties only
            assert np.mean(got == ref) > 0.99
            assert not np.array_equal(got, x)  # 75% of the energy is really gone


def test_altering_test_images_changes_neither_pca_nor_train(tmp_path, noisy, noisy_examples, mnist, manual_dir):
    test_images = mnist["test_images"]
    header = gzip.open(manual_dir / "mnist" / "t10k-images-idx3-ubyte.gz").read()[:16]
    altered = gzip.compress(header + (255 - test_images).tobytes(), compresslevel=1)
    fake = _make_manual_dir(tmp_path / "src", manual_dir, {"mnist/t10k-images-idx3-ubyte.gz": altered})
    cfg = avmnist.avmnist_config(image="pca", audio_snr_db=SNR_DB, max_examples_per_split=N)
    other = _build(tmp_path / "data", cfg, fake, verify_checksums=False, write_tfrecord=False)
    for name in ("pca_components.npy", "pca_mean.npy", "pca_explained_variance_ratio.npy"):
        assert (Path(other.data_path) / name).read_bytes() == (Path(noisy.data_path) / name).read_bytes()
    examples = _read_all(other)
    for a, b in zip(examples["train"], noisy_examples["train"]):
        np.testing.assert_array_equal(a["image"], b["image"])
    assert any(not np.array_equal(a["image"], b["image"]) for a, b in zip(examples["test"], noisy_examples["test"]))


def test_noise_has_requested_snr(noisy_examples, manual_dir):
    exact, scaled = [], []
    for examples in noisy_examples.values():
        for e in examples:
            x, n = _wav_reference(manual_dir, e["audio_id"].decode())
            x, y = x.astype(np.float64), e["audio"].astype(np.float64)
            if np.abs(y).max() >= 32767:  # would have overflowed int16: scaled down as a whole
                scale = (y @ x) / (x @ x)  # estimate only (noise leaks into it), hence a loose check
                scaled.append(10 * np.log10(np.mean((scale * x[:n]) ** 2) / np.mean((y - scale * x) ** 2)))
                continue
            noise = y - x
            exact.append(10 * np.log10(np.mean(x[:n] ** 2) / np.mean(noise**2)))
            if 8000 - n >= 1000:  # white noise over the whole second, padding included
                assert np.mean(noise[n:] ** 2) == pytest.approx(np.mean(noise**2), rel=0.3)
    assert len(exact) > 0.8 * 3 * N
    np.testing.assert_allclose(exact, SNR_DB, atol=0.01)
    np.testing.assert_allclose(scaled, SNR_DB, atol=0.5)


@pytest.mark.parametrize("snr_db", [-10.0, 0.0, 20.0])
def test_add_white_noise_exact_snr_and_scaling_instead_of_clipping(snr_db):
    base = np.zeros(8000, np.int16)
    base[:3000] = np.rint(np.sin(np.arange(3000) / 5) * 1000).astype(np.int16)
    quiet = avmnist.add_white_noise(base, 3000, snr_db, np.random.default_rng(1)).astype(np.float64)
    assert np.abs(quiet).max() < 32767  # no overflow here, so quiet = rint(base + noise)
    noise = quiet - base
    snr = 10 * np.log10(np.mean(base[:3000].astype(np.float64) ** 2) / np.mean(noise**2))
    assert abs(snr - snr_db) < 0.01
    assert np.mean(noise[3000:] ** 2) == pytest.approx(np.mean(noise**2), rel=0.1)
    # The same draw on a 32x louder clip: noise scales with the signal (same SNR); where the sum
    # would overflow int16 the whole clip is scaled down, never clipped.
    loud = avmnist.add_white_noise(32 * base, 3000, snr_db, np.random.default_rng(1)).astype(np.float64)
    assert np.abs(loud).max() <= 32767
    scale = (loud @ quiet) / (quiet @ quiet)
    assert scale <= 32 + 1e-3
    # loud = rint(scale * (base + noise)) and quiet = rint(base + noise): equal up to rounding.
    residual = loud - scale * quiet
    assert np.abs(residual).max() <= 0.5 + 0.5 * scale + 1  # (+1: scale is a fit, not exact)
    assert np.sqrt(np.mean(residual**2)) <= 1.1 * np.sqrt((1 + scale**2) / 12)  # uniform rounding
    if snr_db <= 0:
        assert scale < 31  # these really overflowed and were scaled


def test_rebuild_is_byte_identical_and_tfds_load_reads_the_same(tmp_path, noisy, noisy_examples, manual_dir):
    other = _build(tmp_path, NOISY, manual_dir, write_tfrecord=True)
    a, b = Path(noisy.data_path), Path(other.data_path)
    shards = sorted(p.name for p in a.iterdir() if ".array_record-" in p.name)
    assert shards and shards == sorted(p.name for p in b.iterdir() if ".array_record-" in p.name)
    for name in shards + ["features.json", "metadata.json", "pca_components.npy", "pca_mean.npy"]:
        assert (a / name).read_bytes() == (b / name).read_bytes(), name
    info_a, info_b = (json.loads((d / "dataset_info.json").read_text()) for d in (a, b))
    for info in (info_a, info_b):
        info.pop("fileFormat"), info.pop("alternativeFileFormats", None)
    assert info_a == info_b
    # The tfrecord copy is what tfds.load reads; it holds the same examples in the same order.
    ds = tfds.load(f"avmnist/{NOISY.name}", split="validation", data_dir=tmp_path)
    loaded = list(tfds.as_numpy(ds))
    assert len(loaded) == N
    for got, want in zip(loaded, noisy_examples["validation"]):
        for key in ("image", "audio", "label", "image_index", "audio_id", "audio_length"):
            np.testing.assert_array_equal(got[key], want[key])
    # What tfds.data_source("avmnist/<name>") builds for a registered name: the builder asked
    # for array_record, on disk the alternative format beside tfrecord.
    builder = avmnist.Avmnist(config=NOISY.name, data_dir=tmp_path, file_format="array_record")
    source = builder.as_data_source(split="validation")
    assert len(source) == N
    np.testing.assert_array_equal(source[3]["audio"], noisy_examples["validation"][3]["audio"])


def test_get_data_source_reuses_prepared_data(noisy):
    src = avmnist.get_data_source("test", config=NOISY.name, data_dir=noisy.data_dir_root)
    assert len(src) == N
    with pytest.raises(ValueError, match="valid: train, validation, test"):
        avmnist.get_data_source("dev", config=NOISY.name, data_dir=noisy.data_dir_root)


def test_read_wav_matches_soundfile_on_every_recording(manual_dir):
    for path in sorted((manual_dir / "fsdd" / "recordings").glob("*.wav")):
        ref, rate = sf.read(path, dtype="int16")
        np.testing.assert_array_equal(sources.read_wav(path), ref)


# ----------------------------------------------------------------------------- configs


def test_config_names_round_trip_and_unknown_config_lists_choices():
    cfg = avmnist.resolve_config("pca_snr-5")
    assert (cfg.image, cfg.audio_snr_db, cfg.name) == ("pca", -5.0, "pca_snr-5")
    assert avmnist.avmnist_config(image="pca", audio_snr_db=-5).name == "pca_snr-5"
    assert avmnist.resolve_config("pca_noisy").audio_snr_db == avmnist.DEFAULT_NOISY_SNR_DB
    assert avmnist.avmnist_config(image="pca") is avmnist.resolve_config("pca")
    cfg = avmnist.resolve_config("pca5_snr-11_n64")
    assert (cfg.image, cfg.audio_snr_db, cfg.max_examples_per_split) == ("pca5", -11.0, 64)
    assert avmnist.avmnist_config(image="pca5", audio_snr_db=-11, max_examples_per_split=64).name == cfg.name
    assert avmnist.Avmnist(config="clean_pairseed3_n8").builder_config.pairing_seed == 3
    for bad in ("foo", "pca_snr-5.0", "blurry_snr3", "pca05", "pca785_snr-11", "pca1\u0665"):
        with pytest.raises(ValueError, match=r"Predefined: clean, pca, pca_noisy.*avmnist_config"):
            avmnist.Avmnist(config=bad)
    with pytest.raises(ValueError, match="Predefined: clean, pca, pca_noisy"):
        tfds.builder("avmnist/foo")
    with pytest.raises(ValueError, match="valid choices: clean, pca"):
        avmnist.avmnist_config(image="blurry")
    with pytest.raises(ValueError, match="max_examples_per_split"):
        avmnist.avmnist_config(max_examples_per_split=0)


# ----------------------------------------------------------------------------- bad sources


def test_source_dir_resolution(monkeypatch, tmp_path):
    monkeypatch.delenv(sources.ENV_VAR, raising=False)
    assert sources.resolve_manual_dir() == (sources.default_shared_dir() if sources.default_shared_dir().is_dir() else None)
    monkeypatch.setenv(sources.ENV_VAR, str(tmp_path))
    assert sources.resolve_manual_dir() == tmp_path
    assert sources.resolve_manual_dir(tmp_path / "..") == tmp_path / ".."  # explicit wins
    monkeypatch.setenv(sources.ENV_VAR, str(tmp_path / "nope"))
    with pytest.raises(sources.SourceError, match=sources.ENV_VAR):
        sources.resolve_manual_dir()
    with pytest.raises(sources.SourceError, match="manual_dir .*nope2 does not exist"):
        sources.resolve_manual_dir(tmp_path / "nope2")


def test_missing_source_files_are_named(tmp_path, manual_dir):
    fake = _make_manual_dir(
        tmp_path / "src", manual_dir, {"mnist/train-labels-idx1-ubyte.gz": None, "fsdd/recordings/3_jackson_12.wav": None}
    )
    with pytest.raises(sources.SourceError) as err:
        _build(tmp_path / "data", CLEAN, fake)
    msg = str(err.value)
    assert "2 missing" in msg and "mnist/train-labels-idx1-ubyte.gz" in msg and "3_jackson_12.wav" in msg
    assert "Expected layout" in msg
    _assert_nothing_loadable(tmp_path / "data", CLEAN)
    (tmp_path / "empty").mkdir()
    with pytest.raises(sources.SourceError, match="fsdd/recordings/ .directory with the 3000"):
        sources.locate_manual_sources(tmp_path / "empty")


def test_corrupt_and_truncated_files_fail_checksums(tmp_path, manual_dir):
    wav = (manual_dir / "fsdd/recordings/7_theo_3.wav").read_bytes()
    flipped = wav[:100] + bytes([wav[100] ^ 1]) + wav[101:]
    fake = _make_manual_dir(
        tmp_path / "src",
        manual_dir,
        {"fsdd/recordings/7_theo_3.wav": flipped, "fsdd/recordings/0_lucas_9.wav": wav[:-10]},
    )
    with pytest.raises(sources.SourceError) as err:
        _build(tmp_path / "data", CLEAN, fake)
    msg = str(err.value)
    assert "2 corrupt" in msg and "7_theo_3.wav: sha256" in msg and "0_lucas_9.wav" in msg and "truncated" in msg
    assert "verify_checksums=False" in msg
    _assert_nothing_loadable(tmp_path / "data", CLEAN)


def _bad_wav(manual_dir, kind) -> tuple[bytes, str]:
    """(file bytes, expected error pattern) for one kind of broken recording."""
    good = (manual_dir / "fsdd/recordings/4_george_7.wav").read_bytes()
    x, _ = sf.read(manual_dir / "fsdd/recordings/4_george_7.wav", dtype="int16")
    return {
        "not_wav": (b"this is not audio" * 10, "is not a RIFF/WAVE file"),
        "truncated": (good[: len(good) // 2], "is truncated: data chunk declares"),
        "rate": (_wav_bytes(x, 16000), "sample rate 16000 Hz, expected 8000 Hz; resample"),
        "stereo": (_wav_bytes(np.stack([x, x], 1), 8000), "2 channels; AV-MNIST expects mono"),
    }[kind]


@pytest.mark.parametrize("kind", ["not_wav", "truncated", "rate", "stereo"])
def test_read_wav_rejects_bad_files(tmp_path, manual_dir, kind):
    data, pattern = _bad_wav(manual_dir, kind)
    path = tmp_path / "4_george_7.wav"
    path.write_bytes(data)
    with pytest.raises(sources.SourceError, match=pattern) as err:
        sources.read_wav(path)
    assert str(path) in str(err.value)


@pytest.mark.parametrize("kind", ["truncated", "rate"])
def test_bad_wav_fails_the_build_by_name(tmp_path, manual_dir, clean_source_dir, kind):
    # Replace a recording that the subset really uses, and skip checksums to reach the decoder.
    used = tfds.data_source(f"avmnist/{CLEAN.name}", split="test", data_dir=clean_source_dir)[0]["audio_id"].decode()
    rel = f"fsdd/recordings/{used}.wav"
    data, pattern = _bad_wav(manual_dir, kind)
    fake = _make_manual_dir(tmp_path / "src", manual_dir, {rel: data})
    with pytest.raises(sources.SourceError, match=pattern) as err:
        _build(tmp_path / "data", CLEAN, fake, verify_checksums=False)
    assert str(fake / rel) in str(err.value)
    _assert_nothing_loadable(tmp_path / "data", CLEAN)


def test_misnamed_recording_is_rejected_without_checksums(tmp_path, manual_dir):
    fake = _make_manual_dir(tmp_path / "src", manual_dir, {"fsdd/recordings/hello.wav": b"RIFF"})
    with pytest.raises(sources.SourceError, match=r"hello.wav: FSDD recordings must be named"):
        sources.locate_manual_sources(fake, verify_checksums=False)


def test_failure_while_writing_leaves_nothing_loadable(tmp_path, manual_dir, monkeypatch):
    cfg = avmnist.avmnist_config(image="clean", audio_snr_db=0.0, max_examples_per_split=8)
    calls = []

    def noise_then_fail(*args):
        calls.append(1)
        if len(calls) > 12:  # train split written, validation half-way
            raise RuntimeError("disk full")
        return args[0]

    monkeypatch.setattr(avmnist, "add_white_noise", noise_then_fail)
    with pytest.raises(RuntimeError, match="disk full"):
        _build(tmp_path, cfg, manual_dir, write_tfrecord=False)
    _assert_nothing_loadable(tmp_path, cfg)

    # A failure after every array_record shard is complete (in the tfrecord step) too.
    seen = []

    def fail_after_records(info):
        seen.extend(tmp_path.rglob("*.array_record-*"))
        raise RuntimeError("tfrecord step failed")

    monkeypatch.setattr(tfds_formats, "add_tfrecord_copy", fail_after_records)
    cfg2 = avmnist.avmnist_config(image="clean", max_examples_per_split=8)
    with pytest.raises(RuntimeError, match="tfrecord step failed"):
        _build(tmp_path, cfg2, manual_dir, write_tfrecord=True)
    assert len(seen) == 3  # all three splits had been written ...
    _assert_nothing_loadable(tmp_path, cfg2)  # ... and are gone


def test_download_branch_uses_tfds_manager_and_checks_each_wav(tmp_path, manual_dir):
    extracted = tmp_path / "extracted"
    (extracted / f"free-spoken-digit-dataset-{sources.FSDD_VERSION}").mkdir(parents=True)
    (extracted / f"free-spoken-digit-dataset-{sources.FSDD_VERSION}" / "recordings").symlink_to(manual_dir / "fsdd/recordings")

    class FakeDownloadManager:
        def download(self, urls):
            assert all(u.startswith(sources.MNIST_URL) for u in urls.values())
            return {k: manual_dir / "mnist" / u.rsplit("/", 1)[1] for k, u in urls.items()}

        def download_and_extract(self, url):
            assert url == sources.FSDD_URL
            return extracted

    paths = sources.download_sources(FakeDownloadManager())
    assert len(paths.recordings) == 3000 and set(paths.mnist) == set(sources.MNIST_FILES)
    # The TFDS checksums file the download manager uses lists the four MNIST urls.
    urls = avmnist.Avmnist.url_infos
    assert {sources.MNIST_URL + name for name in sources.MNIST_FILES.values()} == set(urls)
