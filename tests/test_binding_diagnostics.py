"""scripts/binding_diagnostics.py: the R^2 it reports is a least-squares fit's, the synthetic
examples are labelled by their construction, and the fusion-only loop trains."""
import os

import numpy as np

from conftest import REPO
from crossmodal import config_utils
from crossmodal.data import avmnist_tasks

diag = config_utils.load_module(os.path.join(REPO, 'scripts', 'binding_diagnostics.py'),
                                'binding_diagnostics')


def test_digit_r2_is_the_r2_of_a_least_squares_fit_on_the_digit():
  rng = np.random.default_rng(0)
  digits = rng.integers(0, 10, 500)
  tokens = rng.normal(size=(10, 8))[digits] * 0.7 + rng.normal(size=(500, 8))
  onehot = np.eye(10)[digits]
  fit = onehot @ np.linalg.lstsq(onehot, tokens, rcond=None)[0]
  expected = 1 - ((tokens - fit) ** 2).sum() / ((tokens - tokens.mean(0)) ** 2).sum()
  np.testing.assert_allclose(diag.digit_r2(tokens, digits), expected, rtol=1e-9)
  assert diag.digit_r2(rng.normal(size=(500, 8)), digits) < 0.05


def test_synthetic_tokens_show_each_cells_digit_and_the_spoken_one():
  rng = np.random.default_rng(1)
  embeddings = (rng.normal(size=(10, 16)), rng.normal(size=(10, 16)))
  for grid in (2, 3):
    batch = diag.synthetic_tokens(rng, 32, grid, 0.0, 0.0, embeddings)
    cell = avmnist_tasks.cell_of_token(7, 7, avmnist_tasks.layout(f'grid{grid}')).argmax(0)
    rows = np.arange(32)
    np.testing.assert_array_equal(batch['spoken_digits'],
                                  batch['image_digits'][rows, batch['label']])
    np.testing.assert_allclose(batch['image'], embeddings[0][batch['image_digits'][:, cell]],
                               rtol=1e-6)
    np.testing.assert_allclose(batch['audio'][:, 5], embeddings[1][batch['spoken_digits']],
                               rtol=1e-6)
    assert all(len(set(d)) == grid * grid for d in batch['image_digits'])  # distinct digits
    # noiseless tokens: all of an image token's variance is its digit
    r2 = diag.token_r2(batch['image'], batch['audio'], batch['image_digits'],
                       batch['spoken_digits'], grid)
    np.testing.assert_allclose(list(r2.values()), [1.0, 1.0], rtol=1e-9)
  # per-token noise differs between a clip's tokens; shared noise is one draw per clip
  noisy = diag.synthetic_tokens(rng, 8, 2, 1.0, 1.0, embeddings)['audio']
  shared = diag.synthetic_tokens(rng, 8, 2, 1.0, 1.0, embeddings, shared_noise=True)['audio']
  assert not np.allclose(noisy[:, 0], noisy[:, 1])
  np.testing.assert_array_equal(shared, np.broadcast_to(shared[:, :1], shared.shape))
  assert not np.allclose(shared[0, 0], shared[1, 0])
  cell = avmnist_tasks.cell_of_token(7, 7, avmnist_tasks.layout('grid2')).argmax(0)
  image = diag.synthetic_tokens(rng, 8, 2, 1.0, 1.0, embeddings, shared_image_noise=True)['image']
  for c in range(4):  # a cell's tokens are equal (same digit, same noise); cells differ
    tokens = image[:, cell == c]
    np.testing.assert_array_equal(tokens, np.broadcast_to(tokens[:, :1], tokens.shape))
  assert not np.allclose(image[:, cell == 0][:, 0], image[:, cell == 3][:, 0])


def test_fusion_alone_fits_a_fixed_batch():
  """The loop trains the fusion and its head: fed the same 8 examples every step, the training
  loss falls far below chance's ln 4 (a broken step, head or label would keep it there)."""
  rng = np.random.default_rng(2)
  embeddings = (rng.normal(size=(10, 64)), rng.normal(size=(10, 64)))
  fixed = diag.synthetic_tokens(rng, 8, 2, 1.0, 1.0, embeddings)
  cfg = diag.fusion_lib.fusion_config('crossattn', num_layers=1, dropout=0.0)
  logs = list(diag.train_fusion(cfg, lambda r, size: fixed, 2, steps=60, lr=3e-3, seed=0,
                                log_every=20))
  assert [log['step'] for log in logs] == [20, 40, 60]
  assert logs[-1]['train_loss'] < 0.1 * np.log(4), logs


def test_pool_tokens_gives_each_token_its_cells_mean():
  """Every cell of a 7x7 grid2 map has 3x3 tokens wholly inside it (the middle row and column
  straddle); each token becomes the mean of its cell's."""
  rng = np.random.default_rng(3)
  image = rng.normal(size=(5, 49, 4))
  pooled = diag.pool_tokens(image, 2).reshape(5, 7, 7, 4)
  grid = image.reshape(5, 7, 7, 4)
  for rows, cols in ((slice(0, 3), slice(0, 3)), (slice(0, 3), slice(4, 7)),
                     (slice(4, 7), slice(0, 3)), (slice(4, 7), slice(4, 7))):
    mean = grid[:, rows, cols].mean(axis=(1, 2))
    np.testing.assert_allclose(pooled[:, rows, cols], np.broadcast_to(
        mean[:, None, None], (5, 3, 3, 4)), rtol=1e-12)
