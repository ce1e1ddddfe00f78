r"""AV-MNIST conditional GAN: the audio embedding plus noise draws the picture of the spoken
digit, trained against a discriminator that sees the image and the (gradient-stopped) audio
embedding, each with its own optimizer in the one training loop (objectives.py,
`adversarial`; optim.with_discriminator).

  python -m crossmodal.main --config=experiments/avmnist_gan.py --workdir=runs/avmnist_gan

Everything but the generator's loss is experiments/avmnist_reconstruction.py: clean MNIST
targets, the recipe's -11 dB audio, the fused classifier trained beside it, and the same
generator (the reconstruction decoder, a 512-unit MLP, here also reading `noise_dim` noise
values), so the two compare the loss alone.

Presets: loss=hinge|non_saturating (default hinge); decoder=mlp|conv (the generator: the
reconstruction MLP, or DCGAN's transposed convolutions with BatchNorm); mse=<weight> of the reconstruction loss
added to the adversarial one (default 0: a pure GAN); classifier=<workdir of an image-only
run on clean MNIST> adds the reconstruction evaluator's classifier_accuracy (does the picture
show the spoken digit?), e.g. from
  python -m crossmodal.main --config=experiments/avmnist.py:modalities=image,variant=clean \
      --workdir=runs/mnist_classifier
and snr, subset, steps as in avmnist.py.

Expected result: not measured yet with the current discriminator (model.Discriminator,
flattened into a dense layer since 2026-12-08). With the earlier one (SNGAN's sum over
positions) every trial failed (docs/results.md, "Generation", single runs): with this
config's optimizer (Adam 1e-3) the generator saturated into binary noise within 400 steps;
with DCGAN's (--config.optim.lr=2e-4 --config.optim.b1=0.5) it collapsed to one image (the
MNIST classifier read 10% of the images as the spoken digit, chance). The current
discriminator with decoder=conv draws every digit when the condition is the label
(scripts/gan_check.py: diversity 0.295, real digits 0.31). The MSE decoder (mse=1.0
--config.objectives.adversarial.weight=0) scores 39.89% nearest its class mean and 12.94% by
the classifier (before the max-pool gradient fix of 2026-12-08).
"""
import os

import ml_collections

from crossmodal import config_utils
from crossmodal import objectives

_RECONSTRUCTION = config_utils.load_module(
    os.path.join(os.path.dirname(os.path.abspath(__file__)), 'avmnist_reconstruction.py'),
    '_avmnist_gan_base')


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = config_utils.parse_arg(arg, loss='hinge', mse=0.0, classifier='', decoder='mlp',
                             snr=_RECONSTRUCTION._AVMNIST.SNR_DB, subset=0, steps=2000)
  if a.loss not in objectives.GAN_LOSSES:
    raise config_utils.ConfigError(f'avmnist_gan.py: loss={a.loss!r}; valid choices: '
                                   f'{objectives.GAN_LOSSES}')
  if a.mse < 0:
    raise config_utils.ConfigError(f'avmnist_gan.py: mse={a.mse} must be >= 0')
  config = _RECONSTRUCTION.get_config(
      f'weight={a.mse},snr={a.snr},subset={a.subset},steps={a.steps}')
  config.objectives.adversarial.update(weight=1.0, loss=a.loss)
  config.objectives.reconstruction.decoder = a.decoder
  if a.decoder == 'conv':  # DCGAN's generator: 64 channels at 14x14, 128 at 7x7
    config.objectives.reconstruction.hidden = (64,)
  config.evaluators.reconstruction.classifier = a.classifier
  return config
