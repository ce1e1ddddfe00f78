"""scripts/gan_check.py: the label-conditioned GAN of the model's generator and discriminator."""
import os

import numpy as np
import pytest

from conftest import REPO
from crossmodal import config_utils
from crossmodal.evaluators import reconstruction

gan_check = config_utils.load_module(os.path.join(REPO, 'scripts', 'gan_check.py'),
                                     'gan_check', register=True)


@pytest.mark.parametrize('generator', ['mlp', 'conv'])
def test_gan_check_trains_and_draws_one_row_per_class(generator):
  rng = np.random.default_rng(0)
  images = rng.random((128, 28, 28, 1), np.float32)
  labels = rng.integers(0, 10, 128).astype(np.int32)
  drawn = gan_check.train(generator, 'hinge', 3, images, labels, log_every=1)
  assert drawn.shape == (10, 8, 28, 28) and 0 <= drawn.min() and drawn.max() <= 1
  labels = np.repeat(np.arange(10), 8)
  assert reconstruction.diversity(drawn.reshape(80, 28, 28), labels) > 0  # noise reaches them

