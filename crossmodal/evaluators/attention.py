"""PNG maps of an attention fusion's attention weights (mean over heads) for a few examples, and
on an AV-MNIST grid task (crossmodal/data/avmnist_tasks.py) whether the audio attends to the cell
that shows the spoken digit."""
from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np

from crossmodal.data import avmnist_tasks
from crossmodal.evaluators import common

_GRID_FUSIONS = ('crossattn', 'joint')  # fusions whose audio tokens attend to image tokens


class Evaluator(common.Evaluator):
  """Options: split; num_examples (rows of the picture); grid: k of an AV-MNIST grid<k> task
  (0 = none), which adds the score `cell_mass`: the share of the audio queries' attention mass
  on image tokens that falls on the tokens of the labelled cell (the one showing the spoken
  digit), averaged over audio tokens, heads, layers and `score_examples` examples. Tokens whose
  tile straddles a cell border count in part (avmnist_tasks.cell_of_token); `cell_mass_chance`
  is the labelled cell's share of the tokens (what attention spread evenly would give)."""
  HEADLINES = (r'^cell_mass$',)

  def __init__(self, model, objectives=None, data=None, *, split: str = 'test',
               num_examples: int = 4, grid: int = 0, score_examples: int = 1000):
    super().__init__(model, objectives, data, split=split)
    from crossmodal.models import fusion as fusion_lib  # pylint: disable=g-import-not-at-top
    self.num_examples, self.grid, self.score_examples = num_examples, grid, score_examples
    if not fusion_lib.uses_tokens(model.fusion.type):
      self.fail(f'fusion {model.fusion.type!r} has no attention maps (use crossattn, joint or '
                'bottleneck)')
    if num_examples < 1:
      self.fail(f'{num_examples} must be >= 1', 'num_examples')
    if grid:
      if f'grid{grid}' not in avmnist_tasks.TASKS:
        self.fail(f'{grid}: no AV-MNIST task grid{grid}; valid: 0 (no score) or one of '
                  f'{[int(t[4:]) for t in avmnist_tasks.TASKS if t.startswith("grid")]}', 'grid')
      if set(self.modalities) != {'image', 'audio'}:
        self.fail(f'needs modalities image and audio, the model has {list(self.modalities)}',
                  'grid')
      if model.fusion.type not in _GRID_FUSIONS:
        self.fail(f'fusion {model.fusion.type!r} has no attention from audio to image tokens '
                  f'(bottleneck exchanges through its bottleneck tokens); the score needs one of '
                  f'{list(_GRID_FUSIONS)}', 'grid')
      fusion = model.fusion
      if fusion.type == 'crossattn' and fusion.direction != 'both' and (
          self.modalities[1 if fusion.direction == 'a->b' else 0] != 'audio'):
        self.fail(f"crossattn with direction={fusion.direction!r} has no audio queries (the "
                  "image attends to the audio); use direction='both' or the other way", 'grid')
      if score_examples < 1:
        self.fail(f'{score_examples} must be >= 1', 'score_examples')
      task = _avmnist_task(data)
      if task is not None and task != f'grid{grid}':
        self.fail(f'{grid}: the data is AV-MNIST task {task!r}, not grid{grid}', 'grid')

  def metrics(self) -> dict[str, str]:
    return {'cell_mass': 'max'} if self.grid else {}  # otherwise pictures only

  def run(self, predict, batches, workdir: str) -> dict[str, Any]:
    n = self.num_examples
    got = predict.over(_select_maps, batches(), max_examples=n, attention=True)
    names = sorted(k for k in got if k.startswith('attn/'))
    n = min(n, len(got['label']))
    plt = common.pyplot()
    fig, axes = plt.subplots(n, len(names), figsize=(3 * len(names), 3.0 * n), squeeze=False)
    for i in range(n):
      for j, name in enumerate(names):
        ax = axes[i, j]
        ax.imshow(got[name][i], aspect='auto', cmap='viridis')
        ax.set_title(f'{name[5:]} (label {got["label"][i]})', fontsize=7)
        queries, keys = token_axes(name[5:])
        ax.set_xlabel(f'{keys} token (key)', fontsize=6)
        ax.set_ylabel(f'{queries} token (query)', fontsize=6)
        ax.tick_params(labelsize=5)
    fig.tight_layout()
    path = common.save_figure(
        fig, workdir, 'attention.png' if self.split == 'test' else f'attention_{self.split}.png')
    out = {'num_examples': n, 'maps': len(names), 'picture': path}
    if self.grid:
      out.update(self._cell_mass(predict, batches))
    return out

  def _cell_mass(self, predict, batches) -> dict[str, float]:
    got = predict.over(_select_maps, batches(), max_examples=self.score_examples,
                       attention=True, keep=('image',))
    lay = avmnist_tasks.layout(f'grid{self.grid}')
    image_shape = got['image'].shape[1:]
    if image_shape[:2] != lay.image_shape[:2]:
      self.fail(f'{self.grid}: the images are {image_shape[0]}x{image_shape[1]}, those of '
                f'grid{self.grid} {lay.image_shape[0]}x{lay.image_shape[1]}', 'grid')
    keys, side = self._image_tokens(image_shape)
    cells = np.zeros((lay.cells, keys))  # a summary token (last) belongs to no cell
    cells[:, :side * side] = avmnist_tasks.cell_of_token(side, side, lay)
    labelled = cells[got['label']]  # [N, image tokens]: each token's share in the right cell
    out = {}
    for name in sorted(k for k in got if k.startswith('attn/')):
      where = self._audio_queries_image_keys(name[5:], got[name].shape[-1], keys)
      if where is None:
        continue
      w = got[name][:, where[0]][:, :, where[1]]  # [N, audio queries, image keys]
      out[f'cell_mass/{name[5:]}'] = float(cell_mass(w, labelled).mean())
    out['cell_mass'] = float(np.mean(list(out.values())))
    out['cell_mass_chance'] = float(labelled.sum(-1).mean() / keys)
    return out

  def _image_tokens(self, image_shape) -> tuple[int, int]:
    """(image tokens the fusion sees, side of their square map): the image encoder's output
    shape, less a summary token (encoders.lenet_trunk)."""
    enc = self.model.encoder('image')
    x = jax.ShapeDtypeStruct((1, *image_shape), np.uint8)
    encoded = jax.eval_shape(lambda x: enc.init_with_output(jax.random.key(0), x)[0], x)
    keys = encoded.tokens.shape[1]
    summary = int(bool(self.model.trunks().get('image', {}).get('summary_token')))
    side = math.isqrt(keys - summary)
    if side * side != keys - summary:
      self.fail(f'the image encoder gives {keys - summary} tokens, not a square map', 'grid')
    return keys, side

  def _audio_queries_image_keys(self, name: str, width: int, keys: int):
    """(audio query rows, image key columns) of attention map `name` [.., width], or None if
    it has no audio queries over image keys. A class token comes first (pooling='cls')."""
    cls = int(self.model.fusion.pooling == 'cls')
    if name.startswith('cross_') and name.endswith('/image->audio'):
      return slice(cls, None), slice(0, keys)  # keys: the image tokens (class tokens never)
    if name.startswith('layer_') and '/' not in name:  # joint: [cls; tokens in modality order]
      if self.modalities[0] == 'image':
        return slice(cls + keys, width), slice(cls, cls + keys)
      return slice(cls, width - keys), slice(width - keys, width)
    return None


def _avmnist_task(data) -> str | None:
  """The AV-MNIST task of a data config (None: other data, or none given)."""
  from crossmodal.data import avmnist, datasets  # pylint: disable=g-import-not-at-top
  if data is None or datasets.option(data, 'name') != 'avmnist':
    return None
  return avmnist.resolve_config(datasets.option(data, 'builder_config')).task


def cell_mass(weights: np.ndarray, labelled: np.ndarray) -> np.ndarray:
  """[N, Q] share of each query's attention on image keys that falls on the labelled cell.

  weights [N, Q, K]: queries' attention over the K image keys (the rest of a row, e.g. joint
  attention's weights on audio tokens, left out); labelled [N, K]: each key's share in the
  labelled cell.
  """
  return (weights * labelled[:, None, :]).sum(-1) / np.maximum(weights.sum(-1), 1e-30)


def _select_maps(out):
  return {f'attn/{k}': v.mean(1) for k, v in out['attention'].items()}  # mean over heads


def token_axes(name: str) -> tuple[str, str]:
  """(query, key) axis names of an attention map (names from fusion.py): crossattn's
  'cross_0/audio->image' has image queries and audio keys, 'self_0/image' image on both;
  bottleneck's 'layer_1/audio' audio tokens, then the bottleneck tokens in fused layers;
  joint's 'layer_0' every modality's tokens in turn."""
  if '/' not in name:
    return 'all modalities', 'all modalities'
  what = name.split('/', 1)[1]
  if '->' in what:
    source, target = what.split('->', 1)
    return target, source
  if name.startswith('layer_'):
    return f'{what} (+ bottleneck)', f'{what} (+ bottleneck)'
  return what, what
