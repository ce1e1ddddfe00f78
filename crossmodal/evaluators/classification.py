"""Classification on a split: accuracy, macro-F1, per-class P/R/F1 and the confusion matrix
from the fused classifier, and each objective's loss; the in-loop validation and test numbers
and the final ones both come from here.

One confusion matrix and each objective's (loss sum, count) are summed on device over the
whole pass (padding examples masked out) and fetched once; every other number is derived
from them in NumPy, so accuracy, macro-F1 and the per-class numbers agree by construction.
`loss` is the weighted objective (the classification cross-entropy by default).
"""
from __future__ import annotations

import copy
import json
from typing import Any

import jax.numpy as jnp
import numpy as np

from crossmodal import metrics as metrics_lib
from crossmodal import objectives as objectives_lib
from crossmodal import schema
from crossmodal.evaluators import common


class Evaluator(common.Evaluator):
  """Options: split; max_batches (0 = the whole split)."""
  HEADLINES = ()  # ablate.py reports accuracy and macro-F1 in its own columns

  def __init__(self, model, objectives=None, data=None, *, split: str = 'validation',
               max_batches: int = 0):
    super().__init__(model, objectives, data, split=split)
    if max_batches < 0:
      self.fail(f'{max_batches} must be >= 0 (0 = the whole split)', 'max_batches')
    self.max_batches = max_batches
    self.active = objectives_lib.active(objectives)
    self._select = _select_for(model.num_classes, objectives)

  @property
  def _classifies(self) -> bool:
    return 'classification' in self.active

  def _loss_names(self) -> list[str]:
    if len(self.active) > 1 or not self._classifies:
      return [f'loss_{name}' for name in self.active]
    return []

  def metrics(self) -> dict[str, str]:
    out = {'accuracy': common.MAX, 'macro_f1': common.MAX} if self._classifies else {}
    out['loss'] = common.MIN
    out.update({name: common.MIN for name in self._loss_names()})
    return out

  def run(self, predict, batches, workdir: str) -> dict[str, Any]:
    num_classes = self.model.num_classes
    zeros = {'confusion': np.zeros((num_classes, num_classes), np.int32),
             'losses': {name: np.zeros((2,), np.float32) for name in self.active}}
    acc = predict.sums(self._select, batches(), zeros, self.max_batches)
    return summarize(acc, self.objectives)


_SELECTS: dict[str, Any] = {}


def _select_for(num_classes: int, objectives: Any):
  """One select function (so one compiled step) per class count and objectives, shared by
  every classification evaluator of a run."""
  key = json.dumps([num_classes, schema.as_dict(objectives) if objectives else None],
                   sort_keys=True, default=str)
  if key not in _SELECTS:
    objectives = copy.deepcopy(objectives)  # what the key says, whatever happens to the config

    def select(out, batch, axis_name):
      labels = batch['label']
      mask = batch['mask'] if 'mask' in batch else jnp.ones(labels.shape, jnp.bool_)
      losses = objectives_lib.compute(objectives, out, batch, mask=mask, axis_name=axis_name)
      return {
          'confusion': metrics_lib.confusion_matrix(labels, jnp.argmax(out['logits'], -1),
                                                    num_classes, mask),
          'losses': {name: jnp.stack(pair) for name, pair in losses.items()},
      }
    _SELECTS[key] = select
  return _SELECTS[key]


def summarize(acc: dict[str, Any], objectives: Any = None) -> dict[str, Any]:
  """Classification metrics from the confusion matrix (only when the classifier is trained);
  `loss` = the weighted objective, and `loss_<objective>` for each objective."""
  means = {name: float(value / max(float(count), 1.0))
           for name, (value, count) in acc['losses'].items()}
  summary = (metrics_lib.summarize_confusion(acc['confusion']) if 'classification' in means
             else {'num_examples': int(np.asarray(acc['confusion']).sum())})
  summary['loss'] = float(objectives_lib.total(objectives, means))
  if len(means) > 1 or 'classification' not in means:
    summary.update({f'loss_{name}': value for name, value in means.items()})
  return summary
