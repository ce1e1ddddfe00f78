"""AV-MNIST binding tasks (grid, match, seq) on the real sources: what each example is made of,
that labels follow from it, that neither modality alone informs the label, and leak-freedom.

References are independent of the code under test: MNIST parsed with numpy and wavs read with
soundfile (test_avmnist's helpers); compositions rebuilt here with numpy slicing.
"""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest
import tensorflow_datasets as tfds

import test_avmnist as ref
from conftest import REPO
from crossmodal import config_utils, train
from crossmodal.data import avmnist, avmnist_tasks, fingerprint
from test_avmnist import manual_dir  # noqa: F401  (the fixture)

GRID_CONFIG = os.path.join(REPO, "experiments", "avmnist_grid.py")

N = 24  # examples per split in the subset builds
TASKS = avmnist_tasks.TASKS[1:]


def _build(tmp_path_factory, manual_dir, **fields):  # noqa: F811
    config = avmnist.avmnist_config(max_examples_per_split=fields.pop("n", N), **fields)
    return ref._build(tmp_path_factory.mktemp(config.name), config, manual_dir, write_tfrecord=False)


@pytest.fixture(scope="module")
def mnist(manual_dir):  # noqa: F811
    return ref._mnist_reference(manual_dir)


@pytest.fixture(scope="module")
def clean_builds(tmp_path_factory, manual_dir):  # noqa: F811
    return {task: _build(tmp_path_factory, manual_dir, task=task) for task in TASKS}


def _mnist_split_labels(mnist, split):
    labels = mnist["test_labels"] if split == "test" else mnist["train_labels"]
    start, stop = {"train": (0, 55000), "validation": (55000, 60000), "test": (0, 10000)}[split]
    return labels[start:stop], start, stop


def _cells(image, lay):
    s = avmnist_tasks.DIGIT_SIDE
    return [image[r * s:(r + 1) * s, c * s:(c + 1) * s, 0] for r in range(lay.rows) for c in range(lay.cols)]


@pytest.mark.parametrize("task", TASKS)
def test_every_example_is_its_provenance_and_its_label_follows(task, clean_builds, mnist, manual_dir):  # noqa: F811
    builder = clean_builds[task]
    lay = avmnist_tasks.layout(task)
    assert builder.info.features["label"].names == list(lay.class_names)
    seen = {}
    for split in avmnist.SPLITS:
        examples = ref._read_all(builder)[split]
        assert len(examples) == N
        _, start, stop = _mnist_split_labels(mnist, split)
        ids = []
        for ex in examples:
            assert ex["image"].shape == lay.image_shape and ex["audio"].shape == (lay.clips * 8000,)
            indices = ex["image_indices"]
            assert ((start <= indices) & (indices < stop)).all(), (split, indices)  # the split's images only
            for cell, index, digit in zip(_cells(ex["image"], lay), indices, ex["image_digits"]):
                np.testing.assert_array_equal(cell, ref._source_image(mnist, split, index))
                assert digit == ref._source_label(mnist, split, index)
            audio_ids = ex["audio_id"].decode().split(" ")
            assert len(audio_ids) == lay.clips
            clips = [ref._wav_reference(manual_dir, a) for a in audio_ids]
            np.testing.assert_array_equal(ex["audio"], np.concatenate([c for c, _ in clips]))
            assert ex["audio_length"] == (lay.clips - 1) * 8000 + clips[-1][1]
            for a, spoken in zip(audio_ids, ex["spoken_digits"]):
                digit, _, index = a.split("_")
                assert int(digit) == spoken and int(index) in avmnist.RECORDING_INDICES[split]
            ids += audio_ids
            written, spoken, label = list(ex["image_digits"]), list(ex["spoken_digits"]), ex["label"]
            if task.startswith("grid"):
                assert len(set(written)) == lay.cells and written[label] == spoken[0]
            elif task == "match":
                assert label == int(written[0] == spoken[0])
            else:
                wrong = [p + 1 for p in range(lay.clips) if written[p] != spoken[p]]
                assert wrong == ([label] if label else [])
        seen[split] = set(ids)
    assert not (seen["train"] & seen["validation"] or seen["train"] & seen["test"] or seen["validation"] & seen["test"])


@pytest.mark.parametrize("task", TASKS)
def test_labels_balanced_and_neither_modality_alone_informs_them(task, mnist):
    """On the full train split's draw: every class equally often, and the label's distribution
    is the same whatever digit is written or spoken at any position (so a unimodal model is at
    chance). Anchoring examples on MNIST images (digit frequencies 9.0-11.2%) would fail this."""
    labels, _, _ = _mnist_split_labels(mnist, "train")
    d = avmnist_tasks.draw(task, labels, seed=0, split_code=0)
    lay = avmnist_tasks.layout(task)
    counts = np.bincount(d.label, minlength=len(lay.class_names))
    assert counts.max() - counts.min() <= 1
    written = labels[d.image_rows]
    classes = len(lay.class_names)
    views = [written[:, c] for c in range(lay.cells)] + [d.spoken[:, c] for c in range(lay.clips)]
    if task.startswith("grid"):  # the written digit of the target cell is as uniform as the others
        views.append(written[np.arange(len(labels)), d.label])
    for view in views:
        table = np.zeros((10, classes))
        np.add.at(table, (view, d.label), 1)
        share = table / table.sum(1, keepdims=True)
        assert np.abs(share - 1 / classes).max() < 0.035, share  # binomial sd here <= 0.012
        assert np.abs(table.sum(1) / len(labels) - 0.1).max() < 0.01  # digits uniform
    again = avmnist_tasks.draw(task, labels, seed=0, split_code=0)
    other = avmnist_tasks.draw(task, labels, seed=1, split_code=0)
    np.testing.assert_array_equal(again.image_rows, d.image_rows)
    assert (other.image_rows != d.image_rows).any() and (other.label != d.label).any()


def test_pca_and_noise_apply_per_cell_and_per_clip(tmp_path_factory, manual_dir, mnist):  # noqa: F811
    built = _build(tmp_path_factory, manual_dir, task="seq2", image="pca5", audio_snr_db=0.0, n=8)
    lay = avmnist_tasks.layout("seq2")
    basis = {k: np.load(built.data_path / f"pca_{k}.npy") for k in ("mean", "components")}
    assert basis["components"].shape == (5, 784)
    pca = avmnist.PCA(basis["mean"], basis["components"], np.zeros(784))
    snrs = []
    for split, examples in ref._read_all(built).items():
        for ex in examples:
            for cell, index in zip(_cells(ex["image"], lay), ex["image_indices"]):
                want = avmnist.pca_reconstruct(ref._source_image(mnist, split, index)[None], pca)[0]
                np.testing.assert_array_equal(cell, want)
            for p, a in enumerate(ex["audio_id"].decode().split(" ")):
                clean, valid = ref._wav_reference(manual_dir, a)
                noisy = ex["audio"][p * 8000:(p + 1) * 8000].astype(np.float64)
                if np.abs(noisy).max() < 32767:  # not rescaled to fit int16 (test_avmnist checks that)
                    noise = noisy - clean  # over the whole second, as avmnist.add_white_noise
                    snrs.append(10 * np.log10(np.mean(clean[:valid].astype(np.float64) ** 2) / np.mean(noise**2)))
    assert len(snrs) > 0.8 * 3 * 8 * 2
    np.testing.assert_allclose(snrs, 0.0, atol=0.01)


def test_subset_is_a_prefix_and_rebuilds_are_identical(tmp_path_factory, manual_dir, clean_builds):  # noqa: F811
    small = _build(tmp_path_factory, manual_dir, task="grid2", n=8)
    again = _build(tmp_path_factory, manual_dir, task="grid2", n=8)
    full, part = ref._read_all(clean_builds["grid2"]), ref._read_all(small)
    for split in avmnist.SPLITS:
        for a, b in zip(full[split][:8], part[split], strict=True):
            for key in a:
                np.testing.assert_array_equal(a[key], b[key])
    assert fingerprint.recorded(small) == fingerprint.recorded(again)
    assert fingerprint.recorded(small) != fingerprint.recorded(_build(tmp_path_factory, manual_dir, task="grid2",
                                                                        pairing_seed=1, n=8))


def test_task_names_round_trip_and_unknown_tasks_list_choices():
    for name in ("grid2_clean", "grid3_pca5_snr-11_n64", "match_pca_pairseed2", "seq3_clean_noiseseed1"):
        config = avmnist.resolve_config(name)
        assert config.name == name and config.task == name.split("_")[0]
    assert avmnist.resolve_config("pca5_snr-11").task == "digit"
    with pytest.raises(ValueError, match=r"grid2\|grid3\|match\|seq2\|seq3"):
        avmnist.resolve_config("grid4_clean")
    with pytest.raises(ValueError, match="task 'grid4'; valid: grid2, grid3, match, seq2, seq3"):
        avmnist.avmnist_config(task="grid4")
    with pytest.raises(ValueError, match="Unknown AV-MNIST task 'digit2'"):
        avmnist_tasks.layout("digit2")
    assert tfds.builder("avmnist", config="match_clean").info.features["label"].names == ["different", "same"]


@pytest.mark.parametrize("tokens, k, per_cell", [(7, 2, 12.25), (2, 2, 1.0), (6, 3, 4.0), (10, 3, 100 / 9)])
def test_cell_of_token_splits_straddling_tokens(tokens, k, per_cell):
    lay = avmnist_tasks.layout(f"grid{k}")
    share = avmnist_tasks.cell_of_token(tokens, tokens, lay)
    assert share.shape == (k * k, tokens * tokens)
    np.testing.assert_allclose(share.sum(0), 1.0)
    np.testing.assert_allclose(share.sum(1), per_cell)
    if tokens % k == 0:  # whole tokens: each belongs to exactly one cell, cells in row-major order
        np.testing.assert_allclose(share * (1 - share), 0, atol=1e-12)
        t = tokens // k
        assert share[k + 1].reshape(tokens, tokens)[t:2 * t, t:2 * t].all()
    if tokens == 7:  # the middle token is a quarter in each cell
        np.testing.assert_allclose(share[:, 24], 0.25)


@pytest.mark.parametrize("task", TASKS)
def test_every_task_goes_through_pooled_and_attention_fusions(task):
    """experiments/avmnist_grid.py's model on the task's shapes (84x84 grids, 28x84 rows, 3 s of
    audio), traced without compiling: logits over the task's classes."""
    lay = avmnist_tasks.layout(task)
    batch = {"image": jax.ShapeDtypeStruct((2, *lay.image_shape), np.uint8),
             "audio": jax.ShapeDtypeStruct((2, lay.clips * 8000), np.float32),
             "label": jax.ShapeDtypeStruct((2,), np.int32)}
    for fusion in ("concat", "crossattn", "bottleneck"):
        config = config_utils.load_config_file(f"{GRID_CONFIG}:task={task},fusion={fusion}")
        model = train.build_model(config, len(lay.class_names), None)
        out = jax.eval_shape(lambda b, model=model: model.init_with_output(jax.random.key(0), b)[0], batch)
        assert out["logits"].shape == (2, len(lay.class_names)), (task, fusion)
