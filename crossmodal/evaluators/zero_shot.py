"""Zero-shot classification (CLIP's): each image takes the class whose name, embedded by the
text tower through `template`, has the most cosine-similar pooled vector."""
from __future__ import annotations

from typing import Any

import jax
import numpy as np

from crossmodal import objectives as objectives_lib
from crossmodal.evaluators import common


class Evaluator(common.Evaluator):
  """Options: split; template (one '{}' for the class name)."""
  HEADLINES = (r'^(accuracy|majority_class/accuracy)$',)

  def __init__(self, model, objectives=None, data=None, *, split: str = 'test',
               template: str = '{}'):
    super().__init__(model, objectives, data, split=split)
    self.template = template
    if not {'image', 'text'} <= set(self.modalities):
      self.fail(f'needs image and text modalities, the model has {list(self.modalities)}')
    common.embedding_fusion_check(self, ('image', 'text'))
    active = objectives_lib.active(objectives)
    if not ('contrastive' in active and set(objectives['contrastive']['pair']) == {'image',
                                                                                    'text'}):
      # Otherwise the two pooled vectors live in unrelated spaces and the accuracy is noise.
      self.fail('compares image and text embeddings, which only a contrastive objective puts '
                'in one space; set config.objectives.contrastive.weight > 0 with '
                'pair=(text, image)')
    if template.count('{}') != 1:
      self.fail(f"{template!r}: needs exactly one '{{}}' for the class name", 'template')
    if data is not None:
      from crossmodal.data import datasets  # pylint: disable=import-outside-toplevel
      try:
        datasets.check_class_name_text(data)
      except ValueError as e:
        self.fail(str(e))

  def metrics(self) -> dict[str, str]:
    return {'accuracy': common.MAX, 'top5_accuracy': common.MAX}

  def run(self, predict, batches, workdir: str) -> dict[str, Any]:
    from crossmodal.data import datasets  # pylint: disable=import-outside-toplevel
    names = datasets.dataset_info(self.data).class_names
    ids = datasets.class_name_tokens(self.data, [self.template.format(n) for n in names])
    first_pass = batches()
    example = next(first_pass)  # shapes and dtypes of the other modalities
    first_pass.close()
    classes = _text_vectors(predict, ids, example, self.modalities)
    got = predict.over(_select_image, batches())
    return summarize(got['image'], classes, got['label'])


def _select_image(out):
  return {'image': out['embeddings']['image']}


def _select_text(out):
  return {'text': out['embeddings']['text']}


def _text_vectors(predict, ids: np.ndarray, example: dict, modalities) -> np.ndarray:
  """Pooled text vectors [N, D] of token ids [N, L]: one padded global batch through the
  predict function (the other modalities are zeros; encoders do not see each other)."""
  n, devices, processes = len(ids), jax.device_count(), jax.process_count()
  size = -(-n // devices) * devices
  batch = {m: np.zeros((size,) + np.shape(example[m])[1:], np.asarray(example[m]).dtype)
           for m in modalities}
  batch['text'] = np.zeros((size, ids.shape[1]), np.int32)
  batch['text'][:n] = ids
  batch['label'] = np.zeros(size, np.int32)
  batch['mask'] = np.arange(size) < n
  local = size // processes
  rows = slice(jax.process_index() * local, (jax.process_index() + 1) * local)
  out = predict(_select_text, {k: v[rows] for k, v in batch.items()})
  return out['text'][:n]


def summarize(images: np.ndarray, classes: np.ndarray, labels: np.ndarray) -> dict[str, Any]:
  """Each image vector [N, D] takes the class whose vector [C, D] is most cosine-similar
  (ties go to the lower class index)."""
  order = np.argsort(-(common.unit(images) @ common.unit(classes).T), axis=1, kind='stable')
  counts = np.bincount(labels, minlength=len(classes))
  return {'num_examples': int(len(labels)), 'num_classes': int(len(classes)),
          'accuracy': float(np.mean(order[:, 0] == labels)),
          'top5_accuracy': float(np.mean((order[:, :5] == labels[:, None]).any(1))),
          # A classifier that always answers the most common test class.
          'majority_class/accuracy': float(counts.max() / len(labels))}
