"""PNG maps of an attention fusion's attention weights (mean over heads) for a few examples."""
from __future__ import annotations

from typing import Any

from crossmodal.evaluators import common


class Evaluator(common.Evaluator):
  """Options: split; num_examples (rows of the picture)."""

  def __init__(self, model, objectives=None, data=None, *, split: str = 'test',
               num_examples: int = 4):
    super().__init__(model, objectives, data, split=split)
    from crossmodal.models import fusion as fusion_lib  # pylint: disable=g-import-not-at-top
    self.num_examples = num_examples
    if not fusion_lib.uses_tokens(model.fusion.type):
      self.fail(f'fusion {model.fusion.type!r} has no attention maps (use crossattn, joint or '
                'bottleneck)')
    if num_examples < 1:
      self.fail(f'{num_examples} must be >= 1', 'num_examples')

  def metrics(self) -> dict[str, str]:
    return {}  # pictures only

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
    path = common.save_figure(fig, workdir, 'attention.png')
    return {'num_examples': n, 'maps': len(names), 'picture': path}


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
