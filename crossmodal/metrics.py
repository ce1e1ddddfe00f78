"""Classification metrics and the metric writers (console, TensorBoard, metrics.jsonl).

Evaluation accumulates one confusion matrix on device over the whole eval pass (padding
examples masked out), fetches it once, and derives every other number from it in NumPy.
That keeps the eval step free of host syncs and makes accuracy, macro-F1 and per-class
precision/recall consistent with each other by construction.

Training metrics stay on device until a log step (`stack_history`), so the loop does not
stall the accelerator every step.
"""
from __future__ import annotations

import json
import os
import time
from typing import Any, Mapping, Sequence

from absl import logging
from etils import epath
import jax
import jax.numpy as jnp
import numpy as np

from crossmodal import files


def confusion_matrix(labels: jax.Array, predictions: jax.Array, num_classes: int,
                     mask: jax.Array | None = None) -> jax.Array:
  """[num_classes, num_classes] int32 counts; rows = true class, columns = predicted.

  Examples with mask == 0 (eval padding) are not counted. Traceable (use inside jit/pmap).
  """
  weights = jnp.ones(labels.shape, jnp.int32) if mask is None else mask.astype(jnp.int32)
  cm = jnp.zeros((num_classes, num_classes), jnp.int32)
  return cm.at[labels, predictions].add(weights, mode='drop')


def summarize_confusion(cm: np.ndarray) -> dict[str, Any]:
  """Accuracy, macro-F1, per-class precision/recall/F1 from a confusion matrix.

  Precision/recall of a class with no predicted/true examples is 0 (the scikit-learn
  `zero_division=0` convention); macro-F1 averages over all classes.
  """
  cm = np.asarray(cm, np.float64)
  if cm.ndim != 2 or cm.shape[0] != cm.shape[1]:
    raise ValueError(f'confusion matrix must be square, got shape {cm.shape}')
  tp = np.diag(cm)
  true_count = cm.sum(axis=1)
  pred_count = cm.sum(axis=0)
  total = cm.sum()
  with np.errstate(divide='ignore', invalid='ignore'):
    precision = np.where(pred_count > 0, tp / pred_count, 0.0)
    recall = np.where(true_count > 0, tp / true_count, 0.0)
    denom = precision + recall
    f1 = np.where(denom > 0, 2 * precision * recall / denom, 0.0)
  return {
      'accuracy': float(tp.sum() / total) if total > 0 else 0.0,
      'macro_f1': float(f1.mean()),
      'precision': precision.tolist(),
      'recall': recall.tolist(),
      'f1': f1.tolist(),
      'num_examples': int(total),
      'confusion_matrix': cm.astype(np.int64).tolist(),
  }


def stack_history(history: Sequence[Mapping[str, jax.Array]]) -> dict[str, np.ndarray]:
  """Fetches a list of per-step metric dicts (device scalars) in one transfer.

  Returns {name: float64 array [num_steps]}; an empty history gives {}.
  """
  if not history:
    return {}
  fetched = jax.device_get(list(history))
  return {k: np.asarray([np.asarray(m[k], np.float64).mean() for m in fetched])
          for k in fetched[0]}


class Throughput:
  """steps/s and examples/s between consecutive calls (wall clock, host side)."""

  def __init__(self, examples_per_step: int, start_step: int = 0):
    self.examples_per_step = examples_per_step
    self._step = start_step
    self._time = time.perf_counter()

  def reset(self, step: int) -> None:
    self._step, self._time = step, time.perf_counter()

  def __call__(self, step: int) -> dict[str, float]:
    now = time.perf_counter()
    steps = step - self._step
    dt = max(now - self._time, 1e-9)
    self._step, self._time = step, now
    return {'steps_per_sec': steps / dt, 'examples_per_sec': steps * self.examples_per_step / dt}


def _is_scalar(v: Any) -> bool:
  return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)


class _EpathRecordFile:
  """A TensorBoard event file on any `epath` filesystem (gs://, s3:// through TensorFlow's
  gfile or fsspec). Object stores cannot append, so each flush uploads the whole file; event
  files of a run hold scalars only and stay small."""

  def __init__(self, path: str):
    self._path, self._data = epath.Path(path), bytearray()

  def write(self, data: bytes) -> None:
    self._data += data

  def flush(self) -> None:
    self._path.write_bytes(bytes(self._data))

  def close(self) -> None:
    self.flush()


class _EpathRecordFiles:
  def open(self, path: str) -> _EpathRecordFile:
    return _EpathRecordFile(path)

  def directory_check(self, path: str) -> None:
    epath.Path(path).mkdir(parents=True, exist_ok=True)


class MetricWriter:
  """Writes metrics to the console, TensorBoard event files and `<workdir>/metrics.jsonl`.

  Only process 0 writes files (`enabled=False` elsewhere), so a multi-host run produces one
  record per step. Per-class lists go to TensorBoard as `split/name/class_i` and to the JSON
  file as lists; the confusion matrix goes to the JSON file only.

  Files go through `crossmodal.files` / `etils.epath`, so the workdir may be local or gs://
  (where metrics.jsonl is uploaded whole at each write: object stores cannot append).
  """

  def __init__(self, workdir: str, enabled: bool = True, tensorboard: bool = True):
    self.enabled = enabled
    self._tb = None
    self._lines: list[str] = []  # the file's records, kept for object stores (see write)
    if not enabled:
      return
    workdir_path = epath.Path(workdir)
    workdir_path.mkdir(parents=True, exist_ok=True)
    self._path = workdir_path / 'metrics.jsonl'
    self._lines = [json.dumps(r) for r in files.read_jsonl(self._path)]
    if tensorboard:
      # tensorboardX writes event files without importing TensorFlow; remote paths go
      # through epath (its own gs:// writer would need google-cloud-storage).
      from tensorboardX import SummaryWriter  # pylint: disable=g-import-not-at-top
      from tensorboardX import record_writer  # pylint: disable=g-import-not-at-top
      logdir = os.fspath(workdir_path / 'tensorboard')
      if not files.is_local(logdir):
        record_writer.register_writer_factory(logdir.split('://')[0], _EpathRecordFiles())
      self._tb = SummaryWriter(logdir=logdir)

  def discard_after(self, step: int) -> None:
    """Drops records of steps after `step` from metrics.jsonl, so a run resumed from the
    checkpoint at `step` logs each step once."""
    if not self.enabled:
      return
    self._lines = [line for line in self._lines if json.loads(line).get('step', 0) <= step]
    files.write_file(self._path, ''.join(line + '\n' for line in self._lines))

  def write(self, step: int, split: str, metrics: Mapping[str, Any]) -> None:
    if not self.enabled:
      return
    record = {'step': int(step), 'split': split}
    record.update({k: _to_python(v) for k, v in metrics.items()})
    self._lines.append(json.dumps(record))
    files.append_line(self._path, self._lines[-1], self._lines)
    scalars = {k: v for k, v in record.items() if _is_scalar(v) and k != 'step'}
    logging.info('[%s] step %d: %s', split, step,
                 ', '.join(f'{k}={v:.4g}' for k, v in scalars.items()))
    if self._tb is not None:
      for k, v in scalars.items():
        self._tb.add_scalar(f'{split}/{k}', v, step)
      for k, v in record.items():
        if k != 'confusion_matrix' and isinstance(v, list) and all(map(_is_scalar, v)):
          for i, x in enumerate(v):
            self._tb.add_scalar(f'{split}/{k}/class_{i}', x, step)
      self._tb.flush()

  def close(self) -> None:
    if self._tb is not None:
      self._tb.close()
      self._tb = None


def _to_python(v: Any) -> Any:
  if isinstance(v, (np.ndarray, jax.Array)):
    v = np.asarray(v)
    return v.item() if v.ndim == 0 else v.tolist()
  if isinstance(v, np.generic):
    return v.item()
  return v
