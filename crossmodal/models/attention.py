"""Masked multi-head attention and the pre-LN transformer layer every transformer stack uses
(the ViT, AST and text encoders and the attention fusions).

Masking is defined once, here: a key whose mask is False is invisible, and a query that is
masked out or sees no valid key gets exactly zero output and zero weights (never NaN), so a
missing modality can be hidden from fusion by masking alone.

Two switches for scale, both set model-wide (config.model.attention, config.model.remat):
- ATTENTIONS: 'einsum' computes softmax(QK^T)V with explicit einsums and materialises the
  [B, heads, Nq, Nk] weights; 'dot_product' calls jax.nn.dot_product_attention (XLA on CPU and
  TPU; cuDNN flash attention on GPU where the shapes and dtype allow it), which needs no weights
  in memory. Equal outputs and gradients (tested to 1e-5). The fused kernel has no dropout on
  the attention weights: under 'dot_product' the weights are not dropped (as in ViT and
  big_vision), while `dropout` still applies to the attention output and the MLP. A caller
  that asks for the weights (the attention evaluator) gets them from the einsum path.
- REMAT_POLICIES: 'none' keeps every activation for the backward pass; the others recompute
  each transformer layer in the backward pass (jax.checkpoint per layer), saving nothing
  ('full'), only matmul outputs ('dots'), or only matmul outputs without batch dimensions
  ('dots_no_batch'). Same losses and gradients and more FLOPs (tested); the activation memory
  it saves depends on the compiler scheduling the recomputation late: XLA's CPU memory
  analysis shows almost none (docs/architecture.md, "Scale", with the command).

Autoregressive text decoding (models/text_decoder.py) adds two self-attention switches:
`causal` (a query sees only keys at its own position or before) and `decode` (one query per
call; its key and value are written into the 'cache' collection at `decode_index`, and it
attends to every cached position up to it), as in the Flax WMT example's decoder.
"""
from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

COMBINES = ('residual', 'concat_proj', 'concat_proj_residual')
ATTENTIONS = ('einsum', 'dot_product')
REMAT_POLICIES = {
    'none': None,
    'full': jax.checkpoint_policies.nothing_saveable,
    'dots': jax.checkpoint_policies.checkpoint_dots,
    'dots_no_batch': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
}


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
  dropout: float = 0.0  # on the attention weights, only when train=True (einsum only)
  attention: str = 'einsum'  # ATTENTIONS
  causal: bool = False  # query i sees keys j <= i (self-attention of a decoder)
  # One query per call at `decode_index`; keys/values of the positions before it come from the
  # 'cache' collection, made by an init call on full-length inputs (models/text_decoder.py).
  decode: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, inputs_q: jax.Array, inputs_kv: jax.Array, *,
               key_mask: jax.Array | None = None, query_mask: jax.Array | None = None,
               train: bool = False, return_weights: bool = False,
               decode_index: jax.Array | None = None
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

    if self.attention not in ATTENTIONS:
      raise ValueError(f'MultiHeadAttention.attention={self.attention!r}; valid choices: '
                       f'{ATTENTIONS}')
    q = proj('query')(inputs_q) / jnp.asarray(math.sqrt(head_dim), self.dtype)
    k = proj('key')(inputs_kv)
    v = proj('value')(inputs_kv)
    pair_mask = None  # [1, 1, Nq, Nk] when queries see different keys
    if self.decode and self.has_variable('cache', 'cached_key'):
      k, v, key_mask = self._cached(k, v, decode_index, key_mask)
    elif self.causal or self.decode:  # training, or the init call that shapes the cache
      if self.decode:
        self.variable('cache', 'cached_key', jnp.zeros, k.shape, k.dtype)
        self.variable('cache', 'cached_value', jnp.zeros, v.shape, v.dtype)
      pair_mask = jnp.tril(jnp.ones((nq, nk), bool))[None, None]
    valid = key_mask[:, None, None, :] & query_mask[:, None, :, None]  # [B, 1, Nq, Nk]
    if pair_mask is not None:
      valid = valid & pair_mask
    weights = None
    if self.attention == 'dot_product' and not return_weights:
      # q is already scaled. Rows with no valid key come out as some average of the values;
      # they are zeroed below like the einsum path's.
      mask = key_mask[:, None, None, :] if pair_mask is None else valid
      out = jax.nn.dot_product_attention(q, k, v, mask=mask, scale=1.0)
    else:
      # Softmax in float32 whatever the compute dtype; masked logits get the most negative
      # finite value so a fully masked row is uniform (not NaN) before it is zeroed below.
      logits = jnp.einsum('bqhd,bkhd->bhqk', q, k).astype(jnp.float32)
      logits = jnp.where(key_mask[:, None, None, :] if pair_mask is None else valid, logits,
                         jnp.finfo(jnp.float32).min)
      weights = jnp.where(valid, jax.nn.softmax(logits, axis=-1), 0.0)
      attn = weights
      if self.attention == 'einsum':
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

  def _cached(self, k, v, index, key_mask):
    """Writes this position's key/value into the cache; returns the cached keys, values and
    the key mask of positions 0..index (the cache is [B, max_len, heads, head_dim])."""
    if index is None or k.shape[1] != 1:
      raise ValueError('MultiHeadAttention(decode=True) takes one query per call with its '
                       f'decode_index; got {k.shape[1]} positions, decode_index={index}')
    cached_k = self.variable('cache', 'cached_key', jnp.zeros, k.shape, k.dtype)
    cached_v = self.variable('cache', 'cached_value', jnp.zeros, v.shape, v.dtype)
    start = (0, index, 0, 0)
    cached_k.value = jax.lax.dynamic_update_slice(cached_k.value, k, start)
    cached_v.value = jax.lax.dynamic_update_slice(cached_v.value, v, start)
    b, length = cached_k.value.shape[:2]
    seen = jnp.broadcast_to(jnp.arange(length)[None] <= index, (b, length))
    return cached_k.value, cached_v.value, seen


class TransformerLayer(nn.Module):
  """Pre-LN transformer layer: attention sublayer, then x + MLP(LN(x)).

  `contexts=None` is self-attention over x (keys masked by `mask`). Otherwise x attends to
  each context in `contexts` with its own attention (keys masked by `context_masks[i]`),
  giving h_i, combined with the layer's own state s = x by
    'residual':    z = s + sum_i h_i
    'concat_proj': z = [h_1; ...; h_k; s] W_O   (the cross-modal block's output projection;
                   the per-head outputs enter W_O directly, without a separate projection)
    'concat_proj_residual': z = s + [h_1; ...; h_k; s] W_O   (an identity path around it)
  Queries and each context pass their own LayerNorm first; with `shared_norm` (as MulT) one
  LayerNorm ('norm_q') normalises the queries and every context. Returns
  `(x_out, [weights per attention] or None)`.
  """
  num_heads: int
  mlp_ratio: int = 4
  dropout: float = 0.0  # on attention weights (einsum only), attention output and MLP
  combine: str = 'residual'
  shared_norm: bool = False
  attention: str = 'einsum'  # ATTENTIONS
  # Self-attention only (contexts=None): MultiHeadAttention's causal and decode switches.
  causal: bool = False
  decode: bool = False
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  # Positional arguments (no keyword-only ones): `transformer_layer` rematerialises this
  # method with `train` and `return_weights` as static positional arguments.
  @nn.compact
  def __call__(self, x: jax.Array, contexts: Sequence[jax.Array] | None = None,
               mask: jax.Array | None = None,
               context_masks: Sequence[jax.Array | None] | None = None,
               train: bool = False, return_weights: bool = False,
               decode_index: jax.Array | None = None
               ) -> tuple[jax.Array, list[jax.Array] | None]:
    if self.combine not in COMBINES:
      raise ValueError(f'TransformerLayer.combine={self.combine!r}; valid choices: {COMBINES}')
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    d = x.shape[-1]
    x = x.astype(self.dtype)  # the residual stream is in the compute dtype
    norm_q = nn.LayerNorm(name='norm_q', **kw)
    y = norm_q(x)
    if contexts is None:
      kvs = [(y, mask)]
    elif self.causal or self.decode:
      raise ValueError('TransformerLayer: causal and decode apply to self-attention only '
                       '(contexts=None)')
    else:
      context_masks = list(context_masks) if context_masks is not None else [None] * len(contexts)
      if len(context_masks) != len(contexts):
        raise ValueError(f'TransformerLayer: {len(contexts)} contexts but '
                         f'{len(context_masks)} context_masks')
      if self.shared_norm and any(c.shape[-1] != d for c in contexts):
        raise ValueError(f'TransformerLayer: shared_norm needs contexts as wide as the '
                         f'queries ({d}), got {[c.shape[-1] for c in contexts]}')
      kvs = [((norm_q if self.shared_norm else nn.LayerNorm(name=f'norm_kv_{i}', **kw))(c), m)
             for i, (c, m) in enumerate(zip(contexts, context_masks))]
    hs, weights = [], []
    for i, (kv, kv_mask) in enumerate(kvs):
      h, w = MultiHeadAttention(self.num_heads, out_dim=d,
                                output_projection=self.combine == 'residual',
                                dropout=self.dropout, attention=self.attention,
                                causal=self.causal, decode=self.decode,
                                name=f'attention_{i}', **kw)(
          y, kv, key_mask=kv_mask, query_mask=mask, train=train, return_weights=return_weights,
          decode_index=decode_index)
      hs.append(nn.Dropout(self.dropout, deterministic=not train)(h))
      weights.append(w)
    if self.combine == 'residual':
      x = x + sum(hs)
    else:
      z = nn.Dense(d, name='out_proj', **kw)(jnp.concatenate(hs + [x], axis=-1))
      x = x + z if self.combine == 'concat_proj_residual' else z
    z = nn.LayerNorm(name='norm_mlp', **kw)(x)
    z = nn.gelu(nn.Dense(self.mlp_ratio * d, name='mlp_in', **kw)(z))
    z = nn.Dropout(self.dropout, deterministic=not train)(z)
    z = nn.Dense(d, name='mlp_out', **kw)(z)
    x = x + nn.Dropout(self.dropout, deterministic=not train)(z)
    return x, (weights if return_weights else None)


def transformer_layer(remat: str = 'none', *, name: str, **fields: Any):
  """A TransformerLayer (fields as its dataclass), rematerialised per REMAT_POLICIES[remat];
  returns `call(x, contexts=None, *, mask=None, context_masks=None, train=False,
  return_weights=False, decode_index=None)`. Parameter paths are the same with and without remat. Call it inside
  the parent's compact method, like a module."""
  if remat not in REMAT_POLICIES:
    raise ValueError(f'remat={remat!r}; valid choices: {tuple(REMAT_POLICIES)}')
  cls = TransformerLayer
  if remat != 'none':  # self=0, x=1, contexts=2, mask=3, context_masks=4, train=5, weights=6
    cls = nn.remat(TransformerLayer, policy=REMAT_POLICIES[remat], static_argnums=(5, 6))
  layer = cls(name=name, **fields)

  def call(x, contexts=None, *, mask=None, context_masks=None, train=False,
           return_weights=False, decode_index=None):
    return layer(x, contexts, mask, context_masks, train, return_weights, decode_index)
  return call
