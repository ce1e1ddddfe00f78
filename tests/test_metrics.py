"""Metrics: confusion matrix on device (with padding mask), derived metrics vs scikit-learn,
and the writers (metrics.jsonl, TensorBoard events without importing TensorFlow)."""
import glob
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from sklearn import metrics as skm

from crossmodal import files
from crossmodal import metrics


def _random_predictions(seed, n=257, k=7):
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, k, n)
  # Mostly right, with class k-1 never predicted (zero-division case for its precision).
  preds = np.where(rng.random(n) < 0.6, labels, rng.integers(0, k, n))
  preds = np.where(preds == k - 1, 0, preds)
  mask = rng.random(n) < 0.8
  return labels, preds, mask, k


@pytest.mark.parametrize('seed', [0, 1])
def test_confusion_matrix_matches_numpy_and_respects_mask(seed):
  labels, preds, mask, k = _random_predictions(seed)
  cm = jax.jit(metrics.confusion_matrix, static_argnums=2)(
      jnp.asarray(labels), jnp.asarray(preds), k, jnp.asarray(mask))
  expected = np.zeros((k, k), np.int64)
  np.add.at(expected, (labels[mask], preds[mask]), 1)
  np.testing.assert_array_equal(np.asarray(cm), expected)
  assert cm.dtype == jnp.int32
  assert int(cm.sum()) == int(mask.sum())  # padding never counted
  unmasked = metrics.confusion_matrix(jnp.asarray(labels), jnp.asarray(preds), k)
  assert int(unmasked.sum()) == len(labels)


def test_summary_matches_sklearn():
  labels, preds, mask, k = _random_predictions(3)
  labels, preds = labels[mask], preds[mask]
  cm = np.zeros((k, k), np.int64)
  np.add.at(cm, (labels, preds), 1)
  s = metrics.summarize_confusion(cm)
  ks = list(range(k))
  p, r, f, _ = skm.precision_recall_fscore_support(labels, preds, labels=ks, zero_division=0)
  np.testing.assert_allclose(s['precision'], p, rtol=1e-12)
  np.testing.assert_allclose(s['recall'], r, rtol=1e-12)
  np.testing.assert_allclose(s['f1'], f, rtol=1e-12)
  assert s['precision'][k - 1] == 0.0  # never predicted
  assert s['accuracy'] == pytest.approx(skm.accuracy_score(labels, preds), abs=1e-12)
  assert s['macro_f1'] == pytest.approx(
      skm.f1_score(labels, preds, labels=ks, average='macro', zero_division=0), abs=1e-12)
  assert s['num_examples'] == len(labels)
  np.testing.assert_array_equal(s['confusion_matrix'], cm)


def test_summary_rejects_non_square():
  with pytest.raises(ValueError, match='square'):
    metrics.summarize_confusion(np.zeros((3, 4)))


def test_stack_history_fetches_per_step_values():
  history = [{'loss': jnp.float32(i), 'acc': jnp.asarray([i, i + 2.0])} for i in range(4)]
  out = metrics.stack_history(history)
  np.testing.assert_array_equal(out['loss'], [0, 1, 2, 3])
  np.testing.assert_array_equal(out['acc'], [1, 2, 3, 4])  # per-device copies averaged
  assert metrics.stack_history([]) == {}


def test_throughput_counts_examples_per_step():
  t = metrics.Throughput(examples_per_step=32, start_step=10)
  out = t(15)
  assert out['steps_per_sec'] > 0
  assert out['examples_per_sec'] == pytest.approx(32 * out['steps_per_sec'])


def test_writer_jsonl_and_tensorboard_without_tensorflow(tmp_path):
  # A fresh interpreter, so that nothing else imported TensorFlow before the check.
  code = f'''
import sys, numpy as np
from crossmodal import metrics
w = metrics.MetricWriter({str(tmp_path)!r})
w.write(5, 'train', {{'loss': np.float32(0.5), 'steps_per_sec': 3.0}})
w.write(10, 'validation', metrics.summarize_confusion(np.array([[3, 1], [0, 4]])))
w.close()
assert 'tensorflow' not in sys.modules, 'TensorFlow was imported by the metric writer'
'''
  subprocess.run([sys.executable, '-c', code], check=True, timeout=120)
  records = files.read_jsonl(os.path.join(tmp_path, 'metrics.jsonl'))
  assert [(r['step'], r['split']) for r in records] == [(5, 'train'), (10, 'validation')]
  assert records[0]['loss'] == 0.5
  assert records[1]['accuracy'] == pytest.approx(7 / 8)
  assert records[1]['confusion_matrix'] == [[3, 1], [0, 4]]
  assert records[1]['recall'] == [0.75, 1.0]
  events = glob.glob(os.path.join(tmp_path, 'tensorboard', 'events.out.tfevents.*'))
  assert len(events) == 1 and os.path.getsize(events[0]) > 0
  data = open(events[0], 'rb').read()
  for tag in (b'train/loss', b'validation/accuracy', b'validation/recall/class_1'):
    assert tag in data


def test_disabled_writer_writes_nothing(tmp_path):
  w = metrics.MetricWriter(str(tmp_path / 'w'), enabled=False)
  w.write(1, 'train', {'loss': 1.0})
  w.close()
  assert not os.path.exists(tmp_path / 'w')


def test_workdir_files_go_through_epath_so_gs_paths_work(tmp_path, monkeypatch):
  """metrics.jsonl, TensorBoard events and config.json on a gs:// workdir, with epath's
  backend mocked onto a local directory (no bucket, no network)."""
  from etils import epath
  from etils.epath import gpath
  from etils.epath import testing as epath_testing
  # With TensorFlow installed epath routes gs:// to tf.io.gfile, bypassing mock_epath.
  monkeypatch.setattr(gpath, '_is_tf_installed', lambda: False)
  import ml_collections
  from crossmodal import config_utils

  def local(path):
    assert str(path).startswith('gs://bucket/'), path  # every access is a gs:// access
    return str(path).replace('gs://bucket', str(tmp_path))

  one = lambda fn, path, *a, **k: fn(local(path), *a, **k)  # noqa: E731
  two = lambda fn, src, dst, *a, **k: fn(local(src), local(dst), *a, **k)  # noqa: E731
  with epath_testing.mock_epath(open=one, exists=one, isdir=one, listdir=one, glob=one,
                                makedirs=one, mkdir=one, remove=one, stat=one, rmtree=one,
                                rename=two, replace=two, copy=two):
    writer = metrics.MetricWriter('gs://bucket/run')
    writer.write(1, 'train', {'loss': 1.0})
    writer.write(2, 'train', {'loss': 0.5})
    writer.close()
    resumed = metrics.MetricWriter('gs://bucket/run')  # a restart from step 1
    resumed.discard_after(1)
    resumed.write(2, 'train', {'loss': 0.25})
    resumed.close()
    config_utils.write_config(ml_collections.ConfigDict({'seed': 3}), 'gs://bucket/run')
    records = files.read_jsonl('gs://bucket/run/metrics.jsonl')
    assert epath.Path('gs://bucket/run/config.json').exists()
  assert [(r['step'], r['loss']) for r in records] == [(1, 1.0), (2, 0.25)]
  assert files.read_jsonl(tmp_path / 'run' / 'metrics.jsonl') == records
  assert json.loads((tmp_path / 'run' / 'config.json').read_text()) == {'seed': 3}
  events = list((tmp_path / 'run' / 'tensorboard').glob('events.out.tfevents.*'))
  assert events and all(e.stat().st_size > 0 for e in events)
