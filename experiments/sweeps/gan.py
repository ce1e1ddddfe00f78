r"""AV-MNIST audio -> image (issue 24): the same generator (the reconstruction decoder, from
the audio embedding) trained with the mean squared error or as a conditional GAN (hinge or
non-saturating loss), scored by the reconstruction evaluator and by an image classifier
trained independently on clean MNIST (the second command, run first):

  python scripts/ablate.py --config=experiments/avmnist_gan.py:classifier=runs/mnist_classifier \
      --sweep=experiments/sweeps/gan.py --seeds=3 --root=runs/gan
  python -m crossmodal.main --config=experiments/avmnist.py:modalities=image,variant=clean \
      --workdir=runs/mnist_classifier

Table, pictures and reading: docs/results.md, "Generation"; records in docs/runs/gan.
"""
from crossmodal.ablate import Variant


def get_sweep():
  return [
      Variant('mse', arg='mse=1.0', overrides={'objectives.adversarial.weight': 0.0}),
      Variant('gan_hinge', arg='loss=hinge'),
      Variant('gan_non_saturating', arg='loss=non_saturating'),
  ]
