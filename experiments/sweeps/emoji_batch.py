r"""InfoNCE vs the sigmoid loss (SigLIP) at global batch 32, 64, 128 and 256 on emoji
text-image retrieval (held-out concepts): does sigmoid stay at least as good as softmax at
small batch, as the SigLIP paper found?

  python scripts/ablate.py --config=experiments/emoji_retrieval.py \
      --sweep=experiments/sweeps/emoji_batch.py --seeds=3 --root=runs/emoji_batch

Every run takes 400 steps (so larger batches see more examples) and is evaluated at its last
checkpoint (`train.best_metric=''`): the validation loss would choose different steps for the
two losses (docs/results.md, LiT section), which would confound the comparison.
Results: docs/results.md.
"""
from crossmodal.ablate import Variant

BATCHES = (32, 64, 128, 256)


def get_sweep():
  return [Variant(f'{loss}_b{batch}', f'loss={loss}',
                  {'data.global_batch_size': batch, 'train.best_metric': ''})
          for loss in ('infonce', 'sigmoid') for batch in BATCHES]
