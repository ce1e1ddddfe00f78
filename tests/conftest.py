"""Fixtures shared by test modules."""
import jax
import pytest


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
