"""Reconstruction: images decoded from the source modality (the reconstruction objective's
decoder, also the adversarial objective's generator), as a PNG grid with one row per class;
how often a decoded image is nearest to its own class's mean image; and, given an
independently trained image classifier (`classifier`: its run's workdir), how often it reads
the decoded image as the example's class, and how varied the decoded images of a class are
(`diversity`: the mean RMS pixel distance between two images of one class, averaged over the
classes; it mixes what comes from the sources with what comes from a generator's noise).
Every score is reported for the real images too (`real/...`): what a perfect decoder would
get.
"""
from __future__ import annotations

import json
import os
from typing import Any

import jax
import ml_collections
import numpy as np

from crossmodal import transfer
from crossmodal.evaluators import common

DIVERSITY_PER_CLASS = 200  # images per class compared pairwise (200*199/2 pairs)


def diversity(images: np.ndarray, labels: np.ndarray, per_class: int = DIVERSITY_PER_CLASS,
              ) -> float:
  """Mean over classes of the mean RMS pixel distance between two different images of the
  class (the first `per_class` of each): 0 when a decoder draws one image per class."""
  flat = images.reshape(len(images), -1).astype(np.float64)
  means = []
  for c in np.unique(labels):
    x = flat[labels == c][:per_class]
    if len(x) < 2:
      continue
    sq = (x ** 2).sum(1)
    d2 = np.maximum(sq[:, None] + sq[None, :] - 2 * x @ x.T, 0.0) / x.shape[1]
    means.append(np.sqrt(d2)[np.triu_indices(len(x), 1)].mean())
  return float(np.mean(means)) if means else 0.0


class Evaluator(common.Evaluator):
  """Options: split; per_class (decoded examples per row of the picture); classifier (the
  workdir of an image-only run on the target images, read at its best checkpoint; '' = no
  classifier scores)."""
  HEADLINES = (r'^(mse|nearest_class_mean_accuracy|classifier_accuracy|diversity)$',)

  def __init__(self, model, objectives=None, data=None, *, split: str = 'test',
               per_class: int = 8, classifier: str = ''):
    super().__init__(model, objectives, data, split=split)
    self.per_class, self.classifier = per_class, classifier
    if model.decoder is None:
      self.fail('the model has no decoder; set config.objectives.reconstruction.weight > 0 '
                '(or adversarial.weight > 0)')
    if per_class < 1:
      self.fail(f'{per_class} must be >= 1', 'per_class')
    self._classify = None  # built on first use: restoring a checkpoint is not a check
    if classifier:
      self._classifier_model = self._check_classifier(model.decoder[1])

  def metrics(self) -> dict[str, str]:
    scores = {'mse': common.MIN, 'nearest_class_mean_accuracy': common.MAX,
              'diversity': common.MAX}
    if self.classifier:
      scores['classifier_accuracy'] = common.MAX
    return scores

  def run(self, predict, batches, workdir: str) -> dict[str, Any]:
    source, target = self.model.decoder[:2]
    got = predict.over(_select_decoded, batches(), keep=(target,))
    targets = got[target].astype(np.float32) / 255.0  # the real images, for the class means
    labels = got['label']
    classes = np.unique(labels)
    means = np.stack([targets[labels == c].mean(0) for c in classes])
    flat = got['decoded'].reshape(len(labels), -1)
    nearest_mean = lambda x: classes[np.argmin(
        ((x[:, None, :] - means.reshape(len(classes), -1)[None]) ** 2).sum(-1), axis=1)]
    path = self._picture(got['decoded'], labels, classes, means, source, target, workdir)
    result = {'num_examples': int(len(labels)),
              'mse': float(np.mean((flat - targets.reshape(len(labels), -1)) ** 2)),
              'nearest_class_mean_accuracy': float(np.mean(nearest_mean(flat) == labels)),
              # The same score for the real target images: what a perfect decoder would get.
              'real/nearest_class_mean_accuracy': float(np.mean(
                  nearest_mean(targets.reshape(len(labels), -1)) == labels)),
              'diversity': diversity(got['decoded'], labels),
              'real/diversity': diversity(targets, labels),
              'picture': path}
    if self.classifier:
      classify = self._load_classifier(target)
      as_stored = np.round(got['decoded'] * 255.0).astype(np.uint8)  # as real images are
      result['classifier_accuracy'] = float(np.mean(classify(as_stored) == labels))
      result['real/classifier_accuracy'] = float(np.mean(classify(got[target]) == labels))
    return result

  def _check_classifier(self, target: str):
    """The classifier run's model, read from its config.json before any training."""
    from crossmodal.models import model as model_lib  # pylint: disable=g-import-not-at-top
    path = os.path.join(self.classifier, 'config.json')
    if not os.path.exists(path):
      self.fail(f'{self.classifier!r} holds no run (no config.json); train an image classifier '
                'there first, e.g. python -m crossmodal.main --config=experiments/avmnist.py:'
                f'modalities=image,variant=clean --workdir={self.classifier}', 'classifier')
    with open(path, encoding='utf-8') as f:
      config = ml_collections.ConfigDict(json.load(f))
    model = model_lib.build_model(config.model, self.model.num_classes)
    if tuple(model.modalities) != (target,):
      self.fail(f'{self.classifier!r} is a model of {tuple(model.modalities)}; the classifier '
                f'must read the {target} alone', 'classifier')
    return model

  def _load_classifier(self, target: str):
    """predict(images uint8 [N, ...]) -> classes, from the classifier run's best checkpoint
    (restored and compiled once per evaluator)."""
    if self._classify is not None:
      return self._classify
    model = self._classifier_model
    params, batch_stats, _ = transfer.restore(self.classifier, 'best',
                                              where='config.evaluators.reconstruction.classifier')
    variables = {'params': {k: params[k] for k in (f'{target}_encoder', 'fusion')}}
    if batch_stats:
      variables['batch_stats'] = batch_stats
    logits = jax.jit(lambda v, x: model.apply(v, {target: x}, train=False)['logits'])

    def predict(images):
      return np.concatenate([np.argmax(np.asarray(logits(variables, images[i:i + 512])), -1)
                             for i in range(0, len(images), 512)])
    self._classify = predict
    return predict

  def _picture(self, decoded, labels, classes, means, source: str, target: str,
               workdir: str) -> str:
    plt = common.pyplot()
    k = self.per_class
    fig, axes = plt.subplots(len(classes), k + 1, figsize=(k + 1, len(classes)))
    for row, c in enumerate(classes):
      index = np.flatnonzero(labels == c)[:k]
      axes[row, 0].imshow(means[row].squeeze(), cmap='gray', vmin=0, vmax=1)
      for col, j in enumerate(index):
        axes[row, col + 1].imshow(decoded[j].squeeze(), cmap='gray', vmin=0, vmax=1)
    for ax in axes.ravel():
      ax.set_xticks([])
      ax.set_yticks([])
    axes[0, 0].set_title(f'{target}\nclass mean', fontsize=7)
    for col in range(k):
      axes[0, col + 1].set_title(f'from\n{source}', fontsize=7)
    return common.save_figure(fig, workdir, f'reconstruction_{source}_to_{target}.png')


def _select_decoded(out):
  return {'decoded': out['reconstruction']}
