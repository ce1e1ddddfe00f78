r"""AV-MNIST tasks that need binding (issue 25): unimodal baselines and every fusion type, all on
the full LeNet trunks (experiments/avmnist_grid.py's default), so the fusion is the only thing
that differs. The attention fusions that can be scored also report where the audio attends on a
grid (`cell_mass`, every 500 steps and after training).

  python scripts/ablate.py --config=experiments/avmnist_grid.py:task=grid2 \
      --sweep=experiments/sweeps/binding.py --seeds=3 --root=runs/binding_grid2

and the same with task=match (--root=runs/binding_match). Results: docs/results.md, "Where
fusion must bind".
"""
from crossmodal.ablate import Variant
from crossmodal.models.fusion import FUSIONS

SCORED = ('crossattn', 'joint')  # attention from audio tokens to image tokens: cell_mass


def get_sweep():
  return ([Variant('image_only', 'modalities=image'), Variant('audio_only', 'modalities=audio')]
          + [Variant(name, f'fusion={name}' + (',evals=attention' if name in SCORED else ''))
             for name in FUSIONS])
