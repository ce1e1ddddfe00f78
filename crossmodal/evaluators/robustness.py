"""Robustness: accuracy with each modality missing (the model's `present` mask), and as noise
grows on each modality (data/noise.py NOISES, levels in [0, 1]), with the relative robustness
of each curve (area under accuracy vs level, MultiBench). Effective robustness compares runs:
scripts/robustness_report.py."""
from __future__ import annotations

from typing import Any, Sequence

import jax.numpy as jnp
import numpy as np

from crossmodal.data import noise as noise_lib
from crossmodal.evaluators import common

LEVELS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)
# The names of what this evaluator reports (scripts/robustness_report.py reads them back).
CLEAN = 'clean/accuracy'


def missing(modality: str) -> str:
  """Accuracy with `modality` hidden."""
  return f'missing_{modality}/accuracy'


def curve(modality: str, kind: str) -> str:
  """Accuracy at each level of noise `kind` on `modality` (a list)."""
  return f'{modality}_{kind}/accuracy'


def area(modality: str, kind: str | None = None) -> str:
  """Relative robustness of one noise curve, or (kind None) the mean over a modality's."""
  return f'{modality}_{kind}/relative_robustness' if kind else f'{modality}/relative_robustness'


class Evaluator(common.Evaluator):
  """Options: split, levels (0 to 1), max_examples (0 = all), seed, noises {modality: kinds}."""
  HEADLINES = (r'^(clean|missing_[a-z]+)/accuracy$', r'^[a-z]+/relative_robustness$')

  def __init__(self, model, objectives=None, data=None, *, split: str = 'test',
               levels: tuple[float, ...] = LEVELS, max_examples: int = 0, seed: int = 0,
               noises: dict[str, tuple[str, ...]] = dict(noise_lib.NOISES)):
    super().__init__(model, objectives, data, split=split)
    self.levels = tuple(float(l) for l in levels)
    self.max_examples, self.seed = max_examples, seed
    self.noises = {m: tuple(kinds) for m, kinds in dict(noises).items()}
    lv = list(self.levels)
    if len(lv) < 2 or lv[0] != 0.0 or lv != sorted(lv) or lv[-1] != 1.0:
      self.fail(f'{self.levels}: must rise from 0 (clean) to 1, so that areas under the '
                'curves compare', 'levels')
    for m, kinds in self.noises.items():
      for kind in kinds:
        if kind not in noise_lib.NOISES.get(m, ()):
          self.fail(f'{kind!r}; valid choices: {noise_lib.NOISES.get(m, ())}', f'noises.{m}')
    if max_examples < 0:
      self.fail(f'{max_examples} must be >= 0 (0 = the whole split)', 'max_examples')

  def _kinds(self, m: str) -> tuple[str, ...]:
    return self.noises.get(m, ())

  def metrics(self) -> dict[str, str]:
    out = {CLEAN: common.MAX}
    if len(self.modalities) > 1:
      out.update({missing(m): common.MAX for m in self.modalities})
    for m in self.modalities:
      out.update({area(m, kind): common.MAX for kind in self._kinds(m)})
      if self._kinds(m):
        out[area(m)] = common.MAX
    return out

  def run(self, predict, batches, workdir: str) -> dict[str, Any]:
    modalities, levels = self.modalities, self.levels

    def accuracy(transform=None, present_fn=None):
      got = predict.over(_select_prediction, batches(), transform=transform,
                         present_fn=present_fn, max_examples=self.max_examples)
      return float(np.mean(got['pred'] == got['label'])), len(got['label'])

    clean, count = accuracy()
    summary: dict[str, Any] = {'num_examples': count, 'levels': list(levels),
                               CLEAN: clean}
    if len(modalities) > 1:
      for i, m in enumerate(modalities):
        def hide(size, i=i):
          present = np.ones((size, len(modalities)), bool)
          present[:, i] = False
          return present
        summary[missing(m)] = accuracy(present_fn=hide)[0]
    for m in modalities:
      areas = []
      for kind in self._kinds(m):
        accuracies = [clean]
        for level in levels[1:]:
          corrupt = noise_lib.make_transform(m, kind, level, seed=self.seed)
          accuracies.append(accuracy(transform=corrupt)[0])
        summary[curve(m, kind)] = accuracies
        summary[area(m, kind)] = relative_robustness(levels, accuracies)
        areas.append(summary[area(m, kind)])
      if areas:
        summary[area(m)] = float(np.mean(areas))
    return summary


def _select_prediction(out):
  return {'pred': jnp.argmax(out['logits'], -1)}


def relative_robustness(levels: Sequence[float], accuracies: Sequence[float]) -> float:
  """Area under accuracy vs noise level (trapezoid), levels spanning [0, 1] (MultiBench's
  relative robustness; 1.0 = perfect accuracy at every level)."""
  levels, accuracies = np.asarray(levels, np.float64), np.asarray(accuracies, np.float64)
  return float(np.sum(np.diff(levels) * (accuracies[1:] + accuracies[:-1]) / 2))


def effective_robustness(accuracies: Sequence[float], reference: Sequence[float]) -> float:
  """MultiBench's effective robustness: the summed gap over levels between a model's curve
  and the reference's (late fusion) curve shifted to start at the model's clean accuracy."""
  f, ref = np.asarray(accuracies, np.float64), np.asarray(reference, np.float64)
  return float(np.sum(f - (ref + f[0] - ref[0])))
