r"""AV-MNIST contrastive pretraining: the audio and image LeNets aligned by InfoNCE alone (no
labels), with a linear probe of each tower after training. The towers that
experiments/sweeps/avmnist_transfer.py starts from.

  python scripts/ablate.py --config=experiments/avmnist_retrieval.py \
      --sweep=experiments/sweeps/avmnist_pretrain.py --seeds=3 --root=runs/avmnist_pretrain

Results: docs/results.md ("AV-MNIST: contrastive towers, probed and fine-tuned").
"""
from crossmodal.ablate import Variant


def get_sweep():
  return [Variant('infonce', 'probes=true')]
