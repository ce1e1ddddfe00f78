"""Synthetic dataset (shapes, determinism, per-modality learnability) and dataset dispatch."""
import pickle

import ml_collections
import numpy as np
import pytest

from crossmodal.data import datasets, features, input_pipeline, synthetic
from crossmodal.models import text as text_lib

TINY = synthetic.SyntheticParams(num_classes=5, image_size=16, audio_length=800, text_length=20,
                                 num_train=40, num_validation=12, num_test=10, seed=3)


def test_shapes_dtypes_and_splits():
  for split in synthetic.SPLITS:
    src = synthetic.SyntheticSource(split, TINY)
    assert len(src) == TINY.split_size(split)
    ex = src[len(src) - 1]
    assert sorted(ex) == ['audio', 'image', 'label', 'text']
    assert ex['image'].dtype == np.uint8 and ex['image'].shape == (16, 16, 1)
    assert ex['audio'].dtype == np.int16 and ex['audio'].shape == (800,)
    assert ex['text'].dtype == np.int32 and ex['text'].shape == (20,)
    assert ex['label'].dtype == np.int64 and 0 <= ex['label'] < 5
    assert ex['text'][0] == text_lib.BOS_ID
  labels = synthetic.SyntheticSource('train', TINY).labels
  np.testing.assert_array_equal(np.bincount(labels), [8] * 5)  # balanced
  no_text = synthetic.SyntheticSource('test', synthetic.SyntheticParams(num_test=4))
  assert sorted(no_text[0]) == ['audio', 'image', 'label']  # AV-MNIST's keys by default
  assert no_text[0]['image'].shape == (28, 28, 1) and no_text[0]['audio'].shape == (8000,)


def test_deterministic_and_seeded():
  a, b = synthetic.SyntheticSource('train', TINY), synthetic.SyntheticSource('train', TINY)
  for key in a.arrays:
    np.testing.assert_array_equal(a.arrays[key], b.arrays[key])
  other = synthetic.SyntheticSource('train', synthetic.SyntheticParams(
      **{**TINY.__dict__, 'seed': 4}))
  assert not np.array_equal(a.arrays['audio'], other.arrays['audio'])
  val = synthetic.SyntheticSource('validation', TINY)
  assert not np.array_equal(a.arrays['image'][:12], val.arrays['image'])
  restored = pickle.loads(pickle.dumps(a))  # grain workers rebuild the split from params
  np.testing.assert_array_equal(restored.arrays['audio'], a.arrays['audio'])
  assert len(pickle.dumps(a)) < 2000  # parameters, not arrays


def test_caption_names_the_text_group():
  p = synthetic.SyntheticParams(text_length=24, text_noise=0.0, num_train=50)
  src = synthetic.SyntheticSource('train', p)
  captions = text_lib.decode(src.arrays['text'])
  colour = {}
  for caption, label in zip(captions, src.labels):
    word = caption.split()[1]
    group = int(synthetic.text_group(label, p.num_classes))
    assert colour.setdefault(group, word) == word
  assert len(set(colour.values())) == len(colour)


def _nearest_centroid_accuracy(train_x, train_y, test_x, test_y, num_classes):
  centroids = np.stack([train_x[train_y == k].mean(0) for k in range(num_classes)])
  dist = ((test_x[:, None, :] - centroids[None]) ** 2).sum(-1)
  return float((dist.argmin(1) == test_y).mean())


def _standardise(train, test):
  mean, std = train.mean(0), train.std(0) + 1e-6
  scale = np.sqrt(train.shape[1])  # equal total weight per modality when concatenated
  return (train - mean) / std / scale, (test - mean) / std / scale


def test_each_modality_informative_and_fusion_better():
  """Nearest-centroid: each modality alone ~ within-pair guessing (~0.5), both together high."""
  p = synthetic.SyntheticParams(num_train=600, num_test=300)
  train, test = synthetic.SyntheticSource('train', p), synthetic.SyntheticSource('test', p)
  cfg = features.features_config(log_scale='log')

  def modality_features(src):
    image = src.arrays['image'].reshape(len(src), -1).astype(np.float64)
    audio = np.asarray(features.log_mel(src.arrays['audio'] / np.float32(32768), cfg))
    return image, audio.max(axis=1)  # per-band peak level over time

  (img_tr, aud_tr), (img_te, aud_te) = modality_features(train), modality_features(test)
  img_tr, img_te = _standardise(img_tr, img_te)
  aud_tr, aud_te = _standardise(aud_tr, aud_te)
  acc = {
      'image': _nearest_centroid_accuracy(img_tr, train.labels, img_te, test.labels, 10),
      'audio': _nearest_centroid_accuracy(aud_tr, train.labels, aud_te, test.labels, 10),
      'both': _nearest_centroid_accuracy(np.hstack([img_tr, aud_tr]), train.labels,
                                         np.hstack([img_te, aud_te]), test.labels, 10),
  }
  chance = 0.1
  assert acc['image'] > 3 * chance and acc['audio'] > 3 * chance, acc
  assert acc['image'] < 0.7 and acc['audio'] < 0.7, acc  # pairs are confusable per modality
  assert acc['both'] > 0.75 and acc['both'] > max(acc['image'], acc['audio']) + 0.25, acc


def test_config_errors():
  with pytest.raises(ValueError, match=r"config.data.synthetic: unknown option\(s\) "
                     r"\['num_class'\]; valid options: .*'num_classes'"):
    synthetic.SyntheticParams.from_config({'num_class': 3})
  with pytest.raises(ValueError, match='valid splits: train, validation, test'):
    synthetic.SyntheticSource('dev', TINY)
  with pytest.raises(ValueError, match='num_classes=2: need >= 3'):
    synthetic.SyntheticParams(num_classes=2)
  with pytest.raises(ValueError, match=r"image_size=4: must be >= 8.*\n.*text_noise=2.0: must "
                     r"be in \[0, 1\]"):
    synthetic.SyntheticParams(image_size=4, text_noise=2.0)  # every problem at once
  with pytest.raises(IndexError):
    synthetic.SyntheticSource('test', TINY)[10]


# ------------------------------------------------------------------ datasets.py dispatch

def test_dispatch_synthetic_from_config():
  cfg = ml_collections.ConfigDict({'name': 'synthetic',
                                   'synthetic': synthetic.synthetic_config(**TINY.__dict__)})
  src = datasets.get_source(cfg, 'validation')
  assert isinstance(src, synthetic.SyntheticSource) and len(src) == 12
  info = datasets.dataset_info(cfg)
  assert info.num_classes == 5 and info.modalities == ('image', 'audio', 'text')
  assert dict(info.split_sizes) == {'train': 40, 'validation': 12, 'test': 10}
  default = datasets.dataset_info(ml_collections.ConfigDict({'name': 'synthetic'}))
  assert default.modalities == ('image', 'audio') and default.split_sizes['train'] == 5000


def test_dispatch_avmnist_subset_through_the_pipeline(tmp_path):
  """config.data -> AV-MNIST builder (16-example subset from the real sources) -> batches."""
  cfg = ml_collections.ConfigDict({'name': 'avmnist', 'builder_config': 'clean_n16',
                                   'data_dir': str(tmp_path), 'manual_dir': None})  # resolved: env var or ../shared/data
  source = datasets.get_source(cfg, 'validation')
  info = datasets.dataset_info(cfg)
  assert info.num_classes == 10 and info.modalities == ('image', 'audio')
  assert dict(info.split_sizes) == {'train': 16, 'validation': 16, 'test': 16} == {
      split: len(datasets.get_source(cfg, split)) for split in ('train', 'validation', 'test')}
  pipe = input_pipeline.make_pipeline(source, global_batch_size=6, seed=0, shuffle=False,
                                      drop_remainder=False, num_epochs=1, process_index=0,
                                      process_count=1)
  batches = list(pipe)
  assert len(batches) == 3 and sorted(batches[0]) == ['audio', 'image', 'label', 'mask']
  audio = np.concatenate([b['audio'][b['mask']] for b in batches])
  labels = np.concatenate([b['label'][b['mask']] for b in batches])
  assert audio.dtype == np.float32 and audio.shape == (16, 8000)
  np.testing.assert_array_equal(audio, np.stack([source[i]['audio'] for i in range(16)]) / 32768)
  np.testing.assert_array_equal(labels, [source[i]['label'] for i in range(16)])


def test_unknown_dataset_lists_valid_names():
  with pytest.raises(ValueError, match='valid names: avmnist, emoji, synthetic'):
    datasets.get_source(ml_collections.ConfigDict({'name': 'mnist'}), 'train')
