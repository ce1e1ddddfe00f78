r"""AV-MNIST: unimodal baselines and every fusion type, default switches.

  python scripts/ablate.py --config=experiments/avmnist.py --sweep=experiments/sweeps/fusion.py \
      --seeds=3 --root=runs/fusion

Results: docs/results.md.
"""
from crossmodal.ablate import Variant
from crossmodal.models.fusion import FUSIONS


def get_sweep():
  return ([Variant('image_only', 'modalities=image'), Variant('audio_only', 'modalities=audio')]
          + [Variant(name, f'fusion={name}') for name in FUSIONS])
