"""Streams: where a missing modality breaks a cross-modal attention fusion (crossattn with
direction='both', whose fused vector is one pooled block per target stream, in modality order).

Without modality m two things change at once: m's own stream has no valid token and pools to
zeros, and every other stream loses m's keys, so its cross term is zero. This evaluator
separates them on the trained model (the fusion's classifier applied to edited fused vectors):
  missing_<m>/accuracy                 both (what robustness reports)
  missing_<m>/own_block_zeroed/accuracy  m present everywhere, only m's pooled block zeroed
  missing_<m>/keys_masked/accuracy     m's block as with m present, the other streams as
                                       without m (only m's keys masked)
and whether the other streams still carry the label without m: a ridge probe (linear_probe's
fit; fitted on `train_split`, tested on `split`) of stream o's block
  missing_<m>/probe_<o>/accuracy       computed without m
  probe_<o>/accuracy                   computed with every modality (the reference)
"""
from __future__ import annotations

from typing import Any

import numpy as np

from crossmodal.evaluators import common
from crossmodal.evaluators import linear_probe
from crossmodal.models.heads import MLPHead


def _select(out):
  return {'fused': out['fused']}


class Evaluator(common.Evaluator):
  """Options: split (tested on), train_split (the probes are fitted on), max_examples and
  max_train_examples (0 = the whole split), l2 (the ridge probes')."""
  HEADLINES = (r'^missing_[a-z]+/(accuracy|own_block_zeroed/accuracy|keys_masked/accuracy)$',)

  def __init__(self, model, objectives=None, data=None, *, split: str = 'test',
               train_split: str = 'train', max_examples: int = 0, max_train_examples: int = 0,
               l2: float = 1.0):
    super().__init__(model, objectives, data, split=split)
    self.train_split, self.l2 = train_split, float(l2)
    self.max_examples, self.max_train_examples = max_examples, max_train_examples
    fusion = model.fusion
    if fusion.type != 'crossattn' or fusion.get('direction', 'both') != 'both':
      self.fail(f"needs fusion 'crossattn' with direction='both' (one pooled block per "
                f"modality stream), got {fusion.type!r}"
                + (f" direction={fusion.direction!r}" if fusion.type == 'crossattn' else ''))
    if fusion.get('heads', 'shared') != 'shared':
      self.fail("heads='per_stream' classifies each stream alone: a missing stream is left "
                'out of the mean, so there is no shared classifier to decompose')
    if train_split == split:
      self.fail(f'{train_split!r} is also the split the probes are tested on', 'train_split')
    if l2 <= 0:
      self.fail(f'{l2} must be > 0', 'l2')
    for name, value in (('max_examples', max_examples),
                        ('max_train_examples', max_train_examples)):
      if value < 0:
        self.fail(f'{value} must be >= 0 (0 = the whole split)', name)

  def metrics(self) -> dict[str, str]:
    out = {}
    for m in self.modalities:
      for what in ('', 'own_block_zeroed/', 'keys_masked/'):
        out[f'missing_{m}/{what}accuracy'] = common.MAX
      for o in self.modalities:
        if o != m:
          out[f'missing_{m}/probe_{o}/accuracy'] = common.MAX
      out[f'probe_{m}/accuracy'] = common.MAX
    return out

  def _fused(self, predict, batches, hidden: int | None, limit: int) -> dict[str, np.ndarray]:
    """The fused vectors of a pass with modality `hidden` missing (None: all present)."""
    n = len(self.modalities)

    def present(size):
      p = np.ones((size, n), bool)
      if hidden is not None:
        p[:, hidden] = False
      return p
    return predict.over(_select, batches, present_fn=present, max_examples=limit)

  def run(self, predict, batches, workdir: str) -> dict[str, Any]:
    model, names = self.model, self.modalities
    head = MLPHead(hidden=tuple(model.head), num_classes=model.num_classes)
    head_params = {'params': predict.global_state.params['fusion']['head']}
    classify = lambda fused: np.asarray(head.apply(head_params, fused)).argmax(-1)

    def blocks(fused):  # [N, M*D] -> M blocks [N, D]
      return np.split(fused, len(names), axis=1)

    test = {None: self._fused(predict, batches(), None, self.max_examples)}
    train = {None: self._fused(predict, batches(self.train_split), None,
                               self.max_train_examples)}
    labels, train_labels = test[None]['label'], train[None]['label']
    width = test[None]['fused'].shape[1] // len(names)
    summary: dict[str, Any] = {'num_examples': int(len(labels)), 'block_width': int(width)}
    accuracy = lambda fused: float(np.mean(classify(fused) == labels))

    def probe(train_block, test_block):
      p = linear_probe.fit(train_block, train_labels, model.num_classes, 'ridge', self.l2)
      return linear_probe.accuracy(p, test_block, labels)

    present_blocks, present_train = blocks(test[None]['fused']), blocks(train[None]['fused'])
    for i, m in enumerate(names):
      summary[f'probe_{m}/accuracy'] = probe(present_train[i], present_blocks[i])
    for i, m in enumerate(names):
      without = blocks(self._fused(predict, batches(), i, self.max_examples)['fused'])
      without_train = blocks(self._fused(predict, batches(self.train_split), i,
                                         self.max_train_examples)['fused'])
      summary[f'missing_{m}/accuracy'] = accuracy(np.concatenate(without, axis=1))
      zeroed = [np.zeros_like(b) if j == i else b for j, b in enumerate(present_blocks)]
      summary[f'missing_{m}/own_block_zeroed/accuracy'] = accuracy(np.concatenate(zeroed, 1))
      masked = [present_blocks[i] if j == i else b for j, b in enumerate(without)]
      summary[f'missing_{m}/keys_masked/accuracy'] = accuracy(np.concatenate(masked, 1))
      for j, o in enumerate(names):
        if j != i:
          summary[f'missing_{m}/probe_{o}/accuracy'] = probe(without_train[j], without[j])
    return summary
