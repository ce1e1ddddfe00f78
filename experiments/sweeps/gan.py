r"""AV-MNIST audio -> image (issue 24): the same generator (the reconstruction decoder, from
the audio embedding) trained with the mean squared error or as a conditional GAN (hinge or
non-saturating loss), scored by the reconstruction evaluator and by an image classifier
trained independently on clean MNIST (the second command, run first):

  python scripts/ablate.py --config=experiments/avmnist_gan.py:classifier=runs/mnist_classifier \
      --sweep=experiments/sweeps/gan.py --seeds=3 --root=runs/gan
  python -m crossmodal.main --config=experiments/avmnist.py:modalities=image,variant=clean \
      --workdir=runs/mnist_classifier

Not run yet: every GAN trial so far collapsed (docs/results.md, "Generation", with the
single-run trials, their commands and records in docs/runs/gan_trials); this sweep is the
3-seed comparison once a GAN recipe draws digits.
"""
from crossmodal.ablate import Variant


def get_sweep():
  return [
      Variant('mse', arg='mse=1.0', overrides={'objectives.adversarial.weight': 0.0}),
      Variant('gan_hinge', arg='loss=hinge'),
      Variant('gan_non_saturating', arg='loss=non_saturating'),
  ]
