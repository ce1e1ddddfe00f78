"""The CPU fast paths of crossmodal/models/conv.py against lax / flax, values and gradients."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax import lax

from crossmodal.models import conv


def _lax(x, w):
  return lax.conv_general_dilated(x, w, (1, 1), 'SAME',
                                  dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def _value_and_grads(fn, x, w, cotangent):
  y, vjp = jax.vjp(fn, x, w)
  return (y, *vjp(cotangent))


@pytest.mark.parametrize('x_shape, w_shape', [
    ((3, 12, 9, 1), (5, 5, 1, 6)),     # one input channel: shifted forward, lax backward
    ((2, 3, 2, 8), (3, 3, 8, 16)),     # map smaller than the kernel: shifted both ways
    ((2, 1, 1, 4), (3, 3, 4, 5)),      # 1x1 map
    ((2, 7, 6, 3), (3, 3, 3, 4)),      # ordinary case (lax on CPU, shifted forced here)
    ((2, 6, 5, 1), (4, 2, 1, 3)),      # even, non-square kernel: SAME pads low (k-1)//2
])
@pytest.mark.parametrize('impl', ['shifted', 'auto'])
def test_conv2d_same_matches_lax_values_and_gradients(x_shape, w_shape, impl):
  kx, kw, kg = jax.random.split(jax.random.PRNGKey(0), 3)
  x = jax.random.normal(kx, x_shape)
  w = jax.random.normal(kw, w_shape)
  g = jax.random.normal(kg, x_shape[:3] + w_shape[3:])
  want = _value_and_grads(_lax, x, w, g)
  got = _value_and_grads(jax.jit(lambda x, w: conv.conv2d_same(x, w, impl)), x, w, g)
  for name, a, b in zip(('output', 'd/dx', 'd/dw'), got, want):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-4, err_msg=name)


def test_choose_impl_on_cpu():
  assert jax.default_backend() == 'cpu'
  assert conv.choose_impl((8, 101, 64, 1), (5, 5, 1, 6)) == 'shifted'
  assert conv.choose_impl((8, 3, 2, 96), (3, 3, 96, 192)) == 'shifted'
  assert conv.choose_impl((8, 50, 32, 6), (3, 3, 6, 12)) == 'lax'


def test_conv2d_same_rejects_unknown_impl():
  with pytest.raises(ValueError, match="impl='fast'"):
    conv.conv2d_same(jnp.zeros((1, 4, 4, 1)), jnp.zeros((3, 3, 1, 1)), 'fast')


@pytest.mark.parametrize('kwargs, dtype', [
    (dict(kernel_size=(5, 5)), jnp.float32),                    # fast path
    (dict(kernel_size=(3, 3), strides=2), jnp.float32),         # strided: lax
    (dict(kernel_size=(3, 3), padding='VALID'), jnp.float32),   # VALID: lax
    (dict(kernel_size=(3, 3), kernel_dilation=2), jnp.float32),  # dilated: lax
    (dict(kernel_size=(5, 5)), jnp.bfloat16),                   # bfloat16: lax
])
def test_nn_conv_with_drop_in_equals_default(kwargs, dtype):
  x = jax.random.normal(jax.random.PRNGKey(1), (2, 9, 8, 1))
  ours = nn.Conv(4, dtype=dtype, conv_general_dilated=conv.conv_general_dilated, **kwargs)
  ref = nn.Conv(4, dtype=dtype, **kwargs)
  params = ref.init(jax.random.PRNGKey(2), x)
  assert jax.tree.structure(ours.init(jax.random.PRNGKey(2), x)) == jax.tree.structure(params)
  tol = 1e-5 if dtype == jnp.float32 else 0  # the lax fallback is the same computation
  np.testing.assert_allclose(np.asarray(ours.apply(params, x), np.float32),
                             np.asarray(ref.apply(params, x), np.float32), rtol=tol, atol=tol)


@pytest.mark.parametrize('shape', [(2, 8, 6, 3), (2, 101, 64, 2), (1, 3, 2, 4), (1, 1, 5, 1)])
def test_max_pool_2x2_matches_flax_after_relu(shape):
  # Pooled after a ReLU as in the encoders: about half the inputs tie at zero.
  x = jax.random.normal(jax.random.PRNGKey(3), shape)
  out_shape = (shape[0], shape[1] // 2, shape[2] // 2, shape[3])
  g = jax.random.normal(jax.random.PRNGKey(4), out_shape)
  ref = lambda x: nn.max_pool(nn.relu(x), (2, 2), strides=(2, 2))
  ours = lambda x: conv.max_pool_2x2(nn.relu(x))
  y_ref, vjp_ref = jax.vjp(ref, x)
  y, vjp = jax.vjp(jax.jit(ours), x)
  assert y.shape == out_shape
  np.testing.assert_array_equal(y, y_ref)
  np.testing.assert_array_equal(vjp(g)[0], vjp_ref(g)[0])
  # the odd last row / column gets no gradient, as in nn.max_pool
  if shape[1] % 2:
    assert not np.any(vjp(g)[0][:, -1])


def test_max_pool_2x2_gradient_goes_to_the_maximum():
  x = jnp.array([[1., 5.], [3., 2.]]).reshape(1, 2, 2, 1)
  dx = jax.grad(lambda x: conv.max_pool_2x2(x).sum())(x)
  np.testing.assert_array_equal(dx.reshape(2, 2), [[0, 1], [0, 0]])


def test_max_pool_2x2_gradient_survives_jit_in_the_audio_lenet(monkeypatch):
  # The backward pass once compared the input with its saved maximum; under jit XLA recomputed
  # the (BatchNorm, ReLU) input inside a fusion, rounded differently, and up to 65% of the
  # audio LeNet's stem gradient went missing. The full audio trunk in training mode, jitted,
  # must give nn.max_pool's gradients.
  from crossmodal.models import encoders
  enc = encoders.build_encoder('audio', encoders.encoder_config('audio', 'lenet'), 16,
                               with_tokens=False)
  waveform = jax.random.normal(jax.random.PRNGKey(5), (8, 8000)) * 0.1
  weights = jax.random.normal(jax.random.PRNGKey(6), (8, 16))
  variables = enc.init(jax.random.PRNGKey(7), waveform)

  def grads():
    def loss(params):
      out, _ = enc.apply({**variables, 'params': params}, waveform, train=True,
                         mutable=['batch_stats'])
      return jnp.tanh(out.pooled * weights).sum()
    return jax.jit(jax.grad(loss))(variables['params'])

  ours = grads()
  monkeypatch.setattr(encoders.conv_lib, 'max_pool_2x2',
                      lambda x: nn.max_pool(x, (2, 2), strides=(2, 2)))
  ref = grads()
  for (path, a), b in zip(jax.tree_util.tree_leaves_with_path(ours), jax.tree.leaves(ref)):
    scale = float(jnp.abs(b).max())
    # 1e-2 of the largest entry: XLA's own rounding under jit moves the stem kernel's
    # gradient by about 3e-3 (nn.max_pool and lax convolutions alone do the same).
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-2 * scale, err_msg=jax.tree_util.keystr(path))
