"""Convolution and 2x2 max-pooling for the conv encoders, with fast paths for XLA's CPU backend.

XLA's CPU convolutions are slow in two cases the AV-MNIST LeNets hit: a single input channel
(the image and spectrogram stems), where a sum of k*k shifted multiply-adds is a faster forward
pass, and a map smaller than the kernel (the audio LeNet's last 3x2 map under a 3x3 kernel),
where shifted matmuls are faster both ways. And the gradient of `nn.max_pool`
(select_and_scatter) is much slower than a masked copy. `python scripts/benchmark.py
--sections=layers` measures each LeNet stage both ways (docs/performance.md).

`conv_general_dilated` is a drop-in for `lax.conv_general_dilated` (pass it to `nn.Conv`, so
parameters and checkpoints are unchanged) that takes the shifted form in those two cases on CPU
and calls lax otherwise; the results agree to float32 rounding (tests/test_conv.py).
"""
from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

IMPLS = ('auto', 'lax', 'shifted')


def _same_pads(kernel: Sequence[int]) -> list[tuple[int, int]]:
  """lax 'SAME' padding at stride 1: k - 1 in total, the smaller half first."""
  return [((k - 1) // 2, k - 1 - (k - 1) // 2) for k in kernel]


def _lax_same(x: jax.Array, w: jax.Array) -> jax.Array:
  return lax.conv_general_dilated(x, w, (1, 1), 'SAME',
                                  dimension_numbers=('NHWC', 'HWIO', 'NHWC'))


def _shifted_same(x: jax.Array, w: jax.Array) -> jax.Array:
  """Stride-1 'SAME' conv as a sum over kernel offsets of (shifted input) @ w[i, j]."""
  kh, kw = w.shape[:2]
  _, h, wd, _ = x.shape
  xp = jnp.pad(x, [(0, 0), *_same_pads((kh, kw)), (0, 0)])
  out = None
  for i in range(kh):
    for j in range(kw):
      term = jnp.einsum('bhwc,co->bhwo', xp[:, i:i + h, j:j + wd], w[i, j])
      out = term if out is None else out + term
  return out


@jax.custom_vjp
def _shifted_forward_lax_backward(x: jax.Array, w: jax.Array) -> jax.Array:
  """One input channel: the shifted forward is fast, but its autodiff kernel gradient (k*k
  reductions over the whole batch) is slower than lax's, so the backward pass is lax's."""
  return _shifted_same(x, w)


def _forward(x, w):
  return _shifted_same(x, w), (x, w)


def _backward(residuals, g):
  x, w = residuals
  return jax.vjp(_lax_same, x, w)[1](g)


_shifted_forward_lax_backward.defvjp(_forward, _backward)


def choose_impl(x_shape: Sequence[int], w_shape: Sequence[int]) -> str:
  """'shifted' where XLA's CPU convolution is slow (see module doc), else 'lax'."""
  h, w = x_shape[1:3]
  kh, kw = w_shape[:2]
  if jax.default_backend() != 'cpu':
    return 'lax'
  return 'shifted' if x_shape[-1] == 1 or h < kh or w < kw else 'lax'


def conv2d_same(x: jax.Array, w: jax.Array, impl: str = 'auto') -> jax.Array:
  """Stride-1 'SAME' NHWC x HWIO convolution by `impl` ('auto': `choose_impl`)."""
  if impl not in IMPLS:
    raise ValueError(f'conv2d_same: impl={impl!r}; valid choices: {IMPLS}')
  if impl == 'auto':
    impl = choose_impl(x.shape, w.shape)
  if impl == 'lax':
    return _lax_same(x, w)
  if x.shape[-1] == 1 and x.shape[1] >= w.shape[0] and x.shape[2] >= w.shape[1]:
    return _shifted_forward_lax_backward(x, w)
  return _shifted_same(x, w)  # tiny maps: the shifted form is faster both ways


def conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation=None,
                         rhs_dilation=None, dimension_numbers=None, feature_group_count=1,
                         precision=None, **kwargs: Any) -> jax.Array:
  """`lax.conv_general_dilated` with the CPU fast paths for plain stride-1 'SAME' float32 2D
  convolutions in NHWC/HWIO (what `nn.Conv` passes); anything else goes to lax unchanged."""
  plain = (
      lhs.ndim == 4 and padding == 'SAME' and feature_group_count == 1 and precision is None
      and not kwargs and lhs.dtype == jnp.float32 and rhs.dtype == jnp.float32
      and tuple(window_strides) == (1, 1)
      and all(d is None or tuple(d) == (1, 1) for d in (lhs_dilation, rhs_dilation))
      and lax.conv_dimension_numbers(lhs.shape, rhs.shape, dimension_numbers)
      == lax.conv_dimension_numbers(lhs.shape, rhs.shape, ('NHWC', 'HWIO', 'NHWC')))
  if plain:
    return conv2d_same(lhs, rhs)
  return lax.conv_general_dilated(lhs, rhs, window_strides, padding, lhs_dilation,
                                  rhs_dilation, dimension_numbers, feature_group_count,
                                  precision=precision, **kwargs)


def _pool_windows(x: jax.Array) -> jax.Array:
  b, h, w, c = x.shape
  return x[:, :h // 2 * 2, :w // 2 * 2].reshape(b, h // 2, 2, w // 2, 2, c)


def _window_slots(x: jax.Array) -> list[jax.Array]:
  """The four elements of each 2x2 window, each [B, H/2, W/2, C], in row-major order."""
  w = _pool_windows(x)
  return [w[:, :, i, :, j] for i in range(2) for j in range(2)]


@jax.custom_vjp
def max_pool_2x2(x: jax.Array) -> jax.Array:
  """2x2 max-pool, stride 2, 'VALID' (an odd last row/column is dropped), as `nn.max_pool`.

  The gradient goes to one element per window, the first maximum in row-major order (as
  nn.max_pool's select_and_scatter), written as a masked copy: 3x faster on CPU than
  select_and_scatter or autodiff of the reshape-and-max. The forward pass saves which element
  that is (`_argmax_slot`); comparing the input with its saved maximum in the backward pass
  instead loses gradients under jit, where XLA may recompute the input inside a fusion and
  round it differently, so that no element equals the maximum (tests/test_conv.py).
  """
  return _max_of(_window_slots(x))


def _max_of(slots: list[jax.Array]) -> jax.Array:
  return jnp.maximum(jnp.maximum(slots[0], slots[1]), jnp.maximum(slots[2], slots[3]))


def _argmax_slot(slots: list[jax.Array]) -> jax.Array:
  """Index (int8) of the first maximum among the four window slots."""
  best, index = slots[0], jnp.zeros(slots[0].shape, jnp.int8)
  for k, slot in enumerate(slots[1:], start=1):
    index = jnp.where(slot > best, jnp.int8(k), index)
    best = jnp.maximum(best, slot)
  return index


def _pool_forward(x):
  slots = _window_slots(x)
  return _max_of(slots), (_argmax_slot(slots), x.shape)


def _pool_backward(residuals, g):
  index, (b, h, w, c) = residuals
  slot = jnp.array([[0, 1], [2, 3]], jnp.int8).reshape(2, 1, 2, 1)  # row-major, per window
  hit = index[:, :, None, :, None, :] == slot
  dx = jnp.where(hit, g[:, :, None, :, None, :], 0).reshape(b, h // 2 * 2, w // 2 * 2, c)
  return (jnp.pad(dx, ((0, 0), (0, h % 2), (0, w % 2), (0, 0))),)


max_pool_2x2.defvjp(_pool_forward, _pool_backward)
