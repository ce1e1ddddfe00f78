"""Fixtures and helpers shared by test modules.

Helpers are plain module-level names, imported as `from conftest import REPO, ...`: pytest's
default `prepend` import mode puts this directory (tests/, which has no __init__.py) on
sys.path before collecting, so `conftest` is importable from every test module.
"""
import os
import socket

import jax
import numpy as np
import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYNTHETIC = os.path.join(REPO, 'experiments', 'synthetic.py')


# Tiny versions of every (modality, encoder type) (fast on CPU), as encoder_config kwargs.
TINY_ENCODERS = {
    ('image', 'lenet'): dict(base_channels=4, extra_layers=2),
    ('image', 'cnn'): dict(widths=(4, 8)),
    ('image', 'vit'): dict(patch_size=4, depth=1, num_heads=2, mlp_ratio=2),
    ('audio', 'lenet'): dict(base_channels=4, extra_layers=2),
    ('audio', 'ast'): dict(patch_size=(8, 8), patch_stride=(8, 8), depth=1, num_heads=2,
                           mlp_ratio=2),
    ('text', 'transformer'): dict(max_len=16, depth=1, num_heads=2, mlp_ratio=2),
}


def synthetic_config(arg=None):
  """experiments/synthetic.py's config for `arg`, loaded as `--config=<path>[:arg]` loads it."""
  from crossmodal import config_utils  # pylint: disable=import-outside-toplevel
  return config_utils.load_config_file(SYNTHETIC + (f':{arg}' if arg else ''))


def tiny_config(arg='size=tiny'):
  """The synthetic experiment's config with `arg` (default: the tiny size)."""
  return synthetic_config(arg)


def free_port():
  """A TCP port on 127.0.0.1 that was free just now."""
  with socket.socket() as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def host_leaves(tree):
  """{path: numpy value} for every leaf; typed PRNG keys as their raw key data."""
  out = {}
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    if isinstance(leaf, jax.Array) and jax.dtypes.issubdtype(leaf.dtype, jax.dtypes.prng_key):
      leaf = jax.random.key_data(leaf)
    out[jax.tree_util.keystr(path)] = np.asarray(leaf)
  return out


def assert_trees_bitwise_equal(a, b):
  """Same tree paths, and every leaf has the same dtype, shape and bytes."""
  la, lb = host_leaves(a), host_leaves(b)
  assert la.keys() == lb.keys()
  for k in la:
    assert la[k].dtype == lb[k].dtype, k
    assert la[k].shape == lb[k].shape, k
    if la[k].tobytes() != lb[k].tobytes():
      np.testing.assert_array_equal(la[k], lb[k], err_msg=k, strict=True)  # shows the difference
      raise AssertionError(f'{k}: equal values but different bits (e.g. -0.0 vs 0.0, NaN payloads)')


@pytest.fixture(scope='module')
def fast_prng():
  """Counter-based 'rbg' keys for a module (use with `pytestmark`): XLA compiles threefry's
  unrolled rounds slowly on CPU (seconds per initializer shape), which dominated model tests.
  Only for modules whose code under test never depends on the PRNG implementation and that
  compare nothing across device counts (rbg bits may differ between shardings). Restored
  afterwards for other modules."""
  previous = jax.config.jax_default_prng_impl
  jax.config.update('jax_default_prng_impl', 'rbg')
  yield
  jax.config.update('jax_default_prng_impl', previous)
