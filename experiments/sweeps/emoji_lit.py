r"""LiT on emoji (held-out concepts): the text tower trained against an image tower that was
first trained on category classification and then locked, beside both towers trained from
scratch, with InfoNCE and with the sigmoid loss (SigLIP).

  python scripts/ablate.py --config=experiments/emoji_retrieval.py \
      --sweep=experiments/sweeps/emoji_lit.py --seeds=3 --root=runs/lit

after training the image tower that the variants naming `image_from` start from (seed 0, 400
steps, its best validation accuracy checkpoint):

  python -m crossmodal.main --config=experiments/emoji.py:modalities=image --workdir=runs/lit/tower
 Results: docs/results.md.
"""
from crossmodal.ablate import Variant

TOWER = 'runs/lit/tower'


def get_sweep():
  return [Variant('infonce', 'loss=infonce'),
          Variant('infonce_tower', f'loss=infonce,image_from={TOWER}'),
          Variant('infonce_lit', f'loss=infonce,image_from={TOWER},locked=true'),
          Variant('sigmoid', 'loss=sigmoid'),
          Variant('sigmoid_lit', f'loss=sigmoid,image_from={TOWER},locked=true')]
