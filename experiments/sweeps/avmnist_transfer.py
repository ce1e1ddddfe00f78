r"""AV-MNIST transfer: classification (concat fusion) from random towers, from scratch, and from
the contrastive towers of experiments/sweeps/avmnist_pretrain.py (seed 0, its best validation
loss checkpoint), at 500 and 2000 steps; every run ends with a linear probe of each tower.

  python scripts/ablate.py --config=experiments/avmnist.py \
      --sweep=experiments/sweeps/avmnist_transfer.py --seeds=3 --root=runs/avmnist_transfer

after the pretraining sweep (its seed 0 is the one the contrastive variants start from):

  python scripts/ablate.py --config=experiments/avmnist_retrieval.py \
      --sweep=experiments/sweeps/avmnist_pretrain.py --seeds=3 --root=runs/avmnist_pretrain

random_towers trains one step with both encoders locked at their initialisation: its probes
read untrained towers (its classification numbers are those of one step). Only the encoders'
starting point differs between scratch_<n> and contrastive_<n>: the same model, optimizer,
schedule, data order and seed. Results: docs/results.md ("AV-MNIST: contrastive towers,
probed and fine-tuned").
"""
from crossmodal.ablate import Variant

TOWERS = 'runs/avmnist_pretrain/infonce/seed0'


def get_sweep():
  return [Variant('random_towers', 'steps=1,probes=true,locked=true'),
          Variant('scratch_500', 'steps=500,probes=true'),
          Variant('contrastive_500', f'steps=500,probes=true,encoders_from={TOWERS}'),
          Variant('scratch_2000', 'probes=true'),
          Variant('contrastive_2000', f'probes=true,encoders_from={TOWERS}')]
