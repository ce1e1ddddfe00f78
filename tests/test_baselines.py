"""scripts/baselines.py on small synthetic arrays (and, if its sources are present, on emoji)."""
import os

import librosa
import numpy as np
import pytest
from sklearn import cross_decomposition

from crossmodal import config_utils
from crossmodal.data import features
from crossmodal.data import sources
from conftest import REPO

baselines = config_utils.load_module(os.path.join(REPO, 'scripts', 'baselines.py'),
                                     '_baselines')


def _speech_like_clip(seed=0, length=8000, voiced=5000):
  """int16 clip: a few harmonics with a moving pitch and noise, zero-padded like AV-MNIST."""
  rng = np.random.default_rng(seed)
  t = np.arange(voiced) / 8000.0
  pitch = 150 + 60 * np.sin(2 * np.pi * 2 * t)
  phase = 2 * np.pi * np.cumsum(pitch) / 8000.0
  wave = sum(np.sin(h * phase) / h for h in range(1, 6)) * np.hanning(voiced)
  wave = 0.3 * wave / np.abs(wave).max() + 0.01 * rng.standard_normal(voiced)
  clip = np.zeros(length, np.int16)
  clip[:voiced] = np.round(np.clip(wave, -1, 32767 / 32768) * 32768).astype(np.int16)
  return clip


def test_feature_shapes():
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (30, 8, 8, 3), dtype=np.uint8)
  image_fn = baselines.fit_image_features(images[:20], num_components=5)
  assert image_fn(images[20:]).shape == (10, 5)
  texts = ['grinning face', 'smiling face with halo', 'red apple', 'green apple', 'flag: chad',
           'flag: japan', 'keycap 0', 'keycap 1']
  text_fn = baselines.fit_text_features(texts, num_components=4)
  assert text_fn(['red face', 'unseen words']).shape == (2, 4)
  clips = np.stack([_speech_like_clip(s, length=2000, voiced=1500) for s in range(3)])
  stats = baselines.mfcc_stats(clips, batch=2)
  assert stats.shape == (3, 2 * features.FeatureParams().n_mfcc)
  assert np.all(stats[:, 20:] >= 0)  # standard deviations


def test_mfcc_stats_equal_librosa():
  clip = _speech_like_clip()
  y = clip.astype(np.float64) / 32768.0
  p = features.FeatureParams()
  coeffs = librosa.feature.mfcc(y=y, sr=p.sample_rate, n_mfcc=p.n_mfcc, n_fft=p.n_fft,
                                hop_length=p.hop_length, win_length=p.win_length, n_mels=p.n_mels,
                                fmin=p.fmin, fmax=p.max_frequency, center=True, pad_mode='constant',
                                htk=False, norm='ortho')  # [n_mfcc, frames]
  direct = np.concatenate([coeffs.mean(1), coeffs.std(1)])
  ours = baselines.mfcc_stats(clip[None])[0]
  np.testing.assert_allclose(ours, direct, rtol=0, atol=2e-3)  # float32 vs float64


def _blobs(num_per_class=40, num_classes=3, dim=5, seed=0):
  rng = np.random.default_rng(seed)
  centres = 20.0 * np.eye(num_classes, dim)
  y = np.repeat(np.arange(num_classes), num_per_class)
  return centres[y] + rng.standard_normal((len(y), dim)), y


@pytest.mark.parametrize('name', ['logistic regression', 'linear SVM'])
def test_classifiers_separate_separable_data(name):
  x_train, y_train = _blobs(seed=0)
  x_test, y_test = _blobs(num_per_class=10, seed=1)
  got = baselines.classify(baselines.classifiers()[name], x_train, y_train, x_test, y_test)
  assert got == {'accuracy': 1.0, 'macro_f1': 1.0}


def _paired(n, seed, linked=True):
  """Features of two 'modalities' (8 and 10 dims): b is a linear transform of a (or not)."""
  rng = np.random.default_rng(seed)
  a = rng.standard_normal((n, 8))
  mix = np.random.default_rng(100).standard_normal((8, 10))  # the same map for every split
  b = a @ mix if linked else rng.standard_normal((n, 10))
  return {'a': a, 'b': b}, rng.integers(0, 5, n)


def test_retrieval_recovers_a_linear_transform():
  train, _ = _paired(300, seed=0)
  test, labels = _paired(200, seed=1)
  found = baselines.retrieval_results(('a', 'b'), train, test, labels, num_components=8)
  assert set(found) == {('CCA', 'a→b'), ('CCA', 'b→a'), ('linear map (ridge)', 'a→b'),
                        ('linear map (ridge)', 'b→a')}
  for key, summary in found.items():
    assert summary['instance/recall@1'] == 1.0, key
    assert summary['class/recall@1'] == 1.0, key


def test_retrieval_of_unrelated_pairs_is_near_chance():
  train, _ = _paired(300, seed=0, linked=False)
  test, labels = _paired(200, seed=1, linked=False)
  chance = baselines.retrieval.chance_class_recall(labels)
  for key, summary in baselines.retrieval_results(('a', 'b'), train, test, labels,
                                                  num_components=8).items():
    assert summary['instance/recall@1'] <= 0.04, key  # chance 1/200
    assert abs(summary['class/recall@1'] - chance) < 0.12, key


def test_cca_correlations_match_sklearn():
  rng = np.random.default_rng(0)
  a = rng.standard_normal((400, 4))
  b = a[:, :2] @ rng.standard_normal((2, 3)) + rng.standard_normal((400, 3))
  _, _, corr = baselines.fit_cca(a, b, num_components=2, reg=0.0)
  ref = cross_decomposition.CCA(n_components=2, max_iter=2000, tol=1e-10).fit(a, b)
  xs, ys = ref.transform(a, b)
  expected = [abs(np.corrcoef(xs[:, i], ys[:, i])[0, 1]) for i in range(2)]
  np.testing.assert_allclose(corr, expected, atol=1e-4)


def test_main_on_emoji_subset(tmp_path, capsys):
  if sources.resolve_manual_dir() is None:
    pytest.fail(f'Data sources not found at {sources.default_shared_dir()}; they are required')
  out = tmp_path / 'baselines.md'
  assert baselines.main(['--dataset=emoji', '--max_train=200', '--max_test=100',
                         f'--out={out}']) == 0
  table = out.read_text()
  assert table == capsys.readouterr().out
  lines = [line for line in table.splitlines() if line.startswith('| emoji')]
  assert len(lines) == 12  # majority, 3 inputs x 2 classifiers, chance, 2 methods x 2 ways
  assert 'emoji (200 train / 100 test)' in lines[0]
