"""Masked multi-head attention and the pre-LN transformer layer every attention fusion uses.

Masking is defined once, here: a key whose mask is False is invisible, and a query that is
masked out or sees no valid key gets exactly zero output and zero weights (never NaN), so a
missing modality can be hidden from fusion by masking alone.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

COMBINES = ('residual', 'concat_proj')


def _check_mask(mask: jax.Array | None, batch: int, length: int, what: str) -> jax.Array:
  if mask is None:
    return jnp.ones((batch, length), bool)
  if mask.shape != (batch, length):
    raise ValueError(f'MultiHeadAttention: {what} must have shape {(batch, length)}, '
                     f'got {mask.shape}')
  return mask.astype(bool)


class MultiHeadAttention(nn.Module):
  """Queries from `inputs_q` [B, Nq, Dq], keys/values from `inputs_kv` [B, Nk, Dk].

  Returns `(out [B, Nq, out_dim], weights [B, heads, Nq, Nk] or None)`. Weights of valid
  query rows sum to 1 over valid keys and are 0 on masked keys; rows of masked queries or
  with no valid key are all zero and so is their output (no output bias leaks through).
  With `output_projection=False` the concatenated per-head outputs (width `qkv_dim`) are
  returned, for callers that apply their own output projection (e.g. z = [h; s] W_O).
  """
  num_heads: int
  qkv_dim: int | None = None  # total width of q/k/v over all heads; default Dq
  out_dim: int | None = None  # default Dq
  output_projection: bool = True
  dropout: float = 0.0  # on the attention weights, only when train=True
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, inputs_q: jax.Array, inputs_kv: jax.Array, *,
               key_mask: jax.Array | None = None, query_mask: jax.Array | None = None,
               train: bool = False, return_weights: bool = False
               ) -> tuple[jax.Array, jax.Array | None]:
    if inputs_q.ndim != 3 or inputs_kv.ndim != 3 or inputs_q.shape[0] != inputs_kv.shape[0]:
      raise ValueError('MultiHeadAttention expects inputs_q [B, Nq, Dq] and inputs_kv '
                       f'[B, Nk, Dk], got {inputs_q.shape} and {inputs_kv.shape}')
    b, nq, dq = inputs_q.shape
    nk = inputs_kv.shape[1]
    qkv_dim = self.qkv_dim or dq
    if qkv_dim % self.num_heads:
      raise ValueError(f'MultiHeadAttention: qkv_dim={qkv_dim} is not divisible by '
                       f'num_heads={self.num_heads}')
    head_dim = qkv_dim // self.num_heads
    key_mask = _check_mask(key_mask, b, nk, 'key_mask')
    query_mask = _check_mask(query_mask, b, nq, 'query_mask')

    def proj(name):
      return nn.DenseGeneral((self.num_heads, head_dim), dtype=self.dtype,
                             param_dtype=self.param_dtype, name=name)

    q = proj('query')(inputs_q) / jnp.asarray(math.sqrt(head_dim), self.dtype)
    k = proj('key')(inputs_kv)
    v = proj('value')(inputs_kv)
    # Softmax in float32 whatever the compute dtype; masked logits get the most negative
    # finite value so a fully masked row is uniform (not NaN) before it is zeroed below.
    logits = jnp.einsum('bqhd,bkhd->bhqk', q, k).astype(jnp.float32)
    valid = key_mask[:, None, None, :] & query_mask[:, None, :, None]  # [B, 1, Nq, Nk]
    logits = jnp.where(key_mask[:, None, None, :], logits, jnp.finfo(jnp.float32).min)
    weights = jnp.where(valid, jax.nn.softmax(logits, axis=-1), 0.0)
    attn = nn.Dropout(self.dropout, deterministic=not train)(weights)
    out = jnp.einsum('bhqk,bkhd->bqhd', attn.astype(self.dtype), v)
    if self.output_projection:
      out = nn.DenseGeneral(self.out_dim or dq, axis=(-2, -1), dtype=self.dtype,
                            param_dtype=self.param_dtype, name='out')(out)
    else:
      out = out.reshape(b, nq, qkv_dim)
    row_valid = jnp.any(valid, axis=-1)[:, 0, :, None]  # [B, Nq, 1]
    out = jnp.where(row_valid, out, jnp.zeros((), out.dtype))
    return out, (weights if return_weights else None)


class TransformerLayer(nn.Module):
  """Pre-LN transformer layer: attention sublayer, then x + MLP(LN(x)).

  `contexts=None` is self-attention over x (keys masked by `mask`). Otherwise x attends to
  each context in `contexts` with its own attention (keys masked by `context_masks[i]`),
  giving h_i, combined with the layer's own state s = x by
    'residual':    z = s + sum_i h_i
    'concat_proj': z = [h_1; ...; h_k; s] W_O   (the cross-modal block's output projection;
                   the per-head outputs enter W_O directly, without a separate projection).
  Queries and each context pass their own LayerNorm first (as MulT). Returns
  `(x_out, [weights per attention] or None)`.
  """
  num_heads: int
  mlp_ratio: int = 4
  dropout: float = 0.0  # on attention weights, attention output and MLP
  combine: str = 'residual'
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, contexts: Sequence[jax.Array] | None = None, *,
               mask: jax.Array | None = None,
               context_masks: Sequence[jax.Array | None] | None = None,
               train: bool = False, return_weights: bool = False
               ) -> tuple[jax.Array, list[jax.Array] | None]:
    if self.combine not in COMBINES:
      raise ValueError(f'TransformerLayer.combine={self.combine!r}; valid choices: {COMBINES}')
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    d = x.shape[-1]
    x = x.astype(self.dtype)  # the residual stream is in the compute dtype
    y = nn.LayerNorm(name='norm_q', **kw)(x)
    if contexts is None:
      kvs = [(y, mask)]
    else:
      context_masks = list(context_masks) if context_masks is not None else [None] * len(contexts)
      if len(context_masks) != len(contexts):
        raise ValueError(f'TransformerLayer: {len(contexts)} contexts but '
                         f'{len(context_masks)} context_masks')
      kvs = [(nn.LayerNorm(name=f'norm_kv_{i}', **kw)(c), m)
             for i, (c, m) in enumerate(zip(contexts, context_masks))]
    hs, weights = [], []
    for i, (kv, kv_mask) in enumerate(kvs):
      h, w = MultiHeadAttention(self.num_heads, out_dim=d,
                                output_projection=self.combine == 'residual',
                                dropout=self.dropout, name=f'attention_{i}', **kw)(
          y, kv, key_mask=kv_mask, query_mask=mask, train=train, return_weights=return_weights)
      hs.append(nn.Dropout(self.dropout, deterministic=not train)(h))
      weights.append(w)
    if self.combine == 'residual':
      x = x + sum(hs)
    else:
      x = nn.Dense(d, name='out_proj', **kw)(jnp.concatenate(hs + [x], axis=-1))
    z = nn.LayerNorm(name='norm_mlp', **kw)(x)
    z = nn.gelu(nn.Dense(self.mlp_ratio * d, name='mlp_in', **kw)(z))
    z = nn.Dropout(self.dropout, deterministic=not train)(z)
    z = nn.Dense(d, name='mlp_out', **kw)(z)
    x = x + nn.Dropout(self.dropout, deterministic=not train)(z)
    return x, (weights if return_weights else None)
