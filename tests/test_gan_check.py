"""scripts/gan_check.py: the label-conditioned GAN of the model's generator and discriminator."""
import os

import numpy as np
import pytest

from conftest import REPO
from crossmodal import config_utils

gan_check = config_utils.load_module(os.path.join(REPO, 'scripts', 'gan_check.py'),
                                     'gan_check', register=True)


@pytest.mark.parametrize('generator', ['mlp', 'conv'])
def test_gan_check_trains_and_draws_one_row_per_class(generator):
  rng = np.random.default_rng(0)
  images = rng.random((128, 28, 28, 1), np.float32)
  labels = rng.integers(0, 10, 128).astype(np.int32)
  drawn = gan_check.train(generator, 'hinge', 3, images, labels, log_every=1)
  assert drawn.shape == (10, 8, 28, 28) and 0 <= drawn.min() and drawn.max() <= 1
  assert gan_check.diversity(drawn) > 0  # the noise reaches the images


def test_diversity_is_zero_for_copies_and_grows_with_distance():
  same = np.zeros((10, 4, 28, 28))
  assert gan_check.diversity(same) == 0
  apart = same.copy()
  apart[:, ::2] = 1.0  # half the images all white: pairs across halves differ by 1
  assert gan_check.diversity(apart) == pytest.approx(4 / 6)
