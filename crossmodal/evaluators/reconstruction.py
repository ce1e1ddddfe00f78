"""Reconstruction: images decoded from the source modality (the reconstruction objective's
decoder), as a PNG grid with one row per class, and how often a decoded image is nearest to
its own class's mean image (beside the same score for the real images)."""
from __future__ import annotations

from typing import Any

import numpy as np

from crossmodal.evaluators import common


class Evaluator(common.Evaluator):
  """Options: split; per_class (decoded examples per row of the picture)."""
  HEADLINES = (r'^(mse|nearest_class_mean_accuracy)$',)

  def __init__(self, model, objectives=None, data=None, *, split: str = 'test',
               per_class: int = 8):
    super().__init__(model, objectives, data, split=split)
    self.per_class = per_class
    if model.decoder is None:
      self.fail('the model has no decoder; set config.objectives.reconstruction.weight > 0')
    if per_class < 1:
      self.fail(f'{per_class} must be >= 1', 'per_class')

  def metrics(self) -> dict[str, str]:
    return {'mse': common.MIN, 'nearest_class_mean_accuracy': common.MAX}

  def run(self, predict, batches, workdir: str) -> dict[str, Any]:
    source, target, _ = self.model.decoder
    got = predict.over(_select_decoded, batches(), keep=(target,))
    targets = got[target].astype(np.float32) / 255.0  # the real images, for the class means
    labels = got['label']
    classes = np.unique(labels)
    means = np.stack([targets[labels == c].mean(0) for c in classes])
    flat = got['decoded'].reshape(len(labels), -1)
    nearest_mean = lambda x: classes[np.argmin(
        ((x[:, None, :] - means.reshape(len(classes), -1)[None]) ** 2).sum(-1), axis=1)]
    path = self._picture(got['decoded'], labels, classes, means, source, target, workdir)
    return {'num_examples': int(len(labels)),
            'mse': float(np.mean((flat - targets.reshape(len(labels), -1)) ** 2)),
            'nearest_class_mean_accuracy': float(np.mean(nearest_mean(flat) == labels)),
            # The same score for the real target images: what a perfect decoder would get.
            'real/nearest_class_mean_accuracy': float(np.mean(
                nearest_mean(targets.reshape(len(labels), -1)) == labels)),
            'picture': path}

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
