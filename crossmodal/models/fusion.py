"""Fusion registry: every way the model combines its per-modality `Encoded` outputs.

One registry, `FUSIONS`, maps `config.model.fusion.type` to a linen module. A fusion's config
is derived from that module's own dataclass fields (`fusion_config`), so the config lists
exactly the switches the type accepts, a switch for another type is rejected, and an
ablation is one override. Every fusion has the same call:

    out = fusion(encoded: dict[str, Encoded], present: [B, M] bool | None, train,
                 return_attention=False)
    out = {'logits': [B, C] float32, 'fused': [B, Df] (None for 'late'),
           'attention': {name: [B, heads, Nq, Nk]},  # only if return_attention
           'stream_logits': [S, B, C], 'stream_present': [B, S]  # only heads='per_stream'
          }

`present[:, i]` says whether example b has modality `modalities[i]`. A missing modality never
influences the output: its pooled vector is replaced by the operation's neutral element
(0 for sums/concat, 1 for products, [0..0, 1] for tensor fusion), it is dropped from
averages and softmaxes, and its tokens are invalid keys (and ignored queries) in attention.
The pooled fusions read `Encoded.pooled`; the attention fusions read `tokens` and `mask`.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections

from crossmodal import schema
from crossmodal.models.attention import COMBINES, transformer_layer
from crossmodal.models.encoders import Encoded
from crossmodal.models.heads import MLPHead

POOLINGS = ('cls', 'mean')
# 'shared': one classifier on the fused vector; 'per_stream' (MBT): one per modality stream,
# the mean of their losses in training (objectives.compute), of their logits otherwise.
HEADS = ('shared', 'per_stream')
DIRECTIONS = ('a->b', 'b->a', 'both')
KV_SOURCES = ('first_layer', 'updated')
GATES = ('sigmoid', 'softmax')
# Tensor fusion's flattened outer product grows as (proj_dim + 1) ** M; above this, use
# lowrank_tensor or a smaller proj_dim.
MAX_TENSOR_DIM = 1 << 16

_embed_init = nn.initializers.normal(stddev=0.02)


class _FusionBase(nn.Module):
  """Fields set by `build_fusion` from the model config, not by the fusion's own config."""
  modalities: tuple[str, ...] = ()
  num_classes: int = 0
  head_hidden: tuple[int, ...] = ()
  head_dropout: float = 0.0
  dtype: Any = jnp.float32  # compute dtype (bfloat16 for mixed precision)
  param_dtype: Any = jnp.float32
  # config.model.attention / .remat (models/attention.py), for the attention fusions' layers.
  attention: str = 'einsum'
  remat: str = 'none'

  # Per-type rules for the config fields (class attributes, not dataclass fields).
  min_modalities = 2
  choices = {}  # str field -> valid values
  positive = ()  # int fields that must be >= 1
  non_negative = ()  # int fields that must be >= 0
  fractions = ()  # float fields in [0, 1) besides `dropout`

  @classmethod
  def config_defaults(cls) -> dict[str, Any]:
    """The type's config fields and their defaults (the single source of truth)."""
    return schema.defaults_of(cls, skip=tuple(_BUILD_FIELDS))

  @classmethod
  def check(cls, values: Mapping[str, Any], num_modalities: int | None = None
            ) -> dict[str, Any]:
    """The type's fields, its defaults overridden by `values`; ConfigError naming every bad
    field as config.model.fusion.<field> with its valid values."""
    rules = {**{f: schema.int_at_least(1) for f in cls.positive},
             **{f: schema.int_at_least(0) for f in cls.non_negative}}
    defaults = cls.config_defaults()
    for f in ('dropout',) * ('dropout' in defaults) + tuple(cls.fractions):
      rules[f] = schema.FRACTION
    values = schema.check(WHERE, values, defaults, choices=cls.choices, rules=rules)
    if num_modalities is not None and num_modalities < cls.min_modalities:
      raise schema.ConfigError(
          f'fusion {_type_name(cls)!r} needs at least {cls.min_modalities} modalities, got '
          f'{num_modalities}; for one modality use concat or late')
    cls._check_type(values, num_modalities)
    return values

  @classmethod
  def _check_type(cls, values: Mapping[str, Any], num_modalities: int | None) -> None:
    """Cross-field rules of one type (override; raise schema.ConfigError)."""

  # ------------------------------------------------------------------ shared helpers

  def _prepare(self, encoded: Mapping[str, Encoded], present: jax.Array | None
               ) -> tuple[list[Encoded], jax.Array]:
    """Checks inputs and config; returns Encoded in `modalities` order and present [B, M]."""
    if not self.modalities:
      raise ValueError(f'fusion {_type_name(type(self))!r}: no modalities; build it with '
                       'build_fusion(cfg, modalities=...)')
    type(self).check({k: getattr(self, k) for k in self.config_defaults()}, len(self.modalities))
    missing = [m for m in self.modalities if m not in encoded]
    if missing:
      raise ValueError(f'fusion: encoded has no {missing}; got {sorted(encoded)}, '
                       f'modalities={self.modalities}')
    encs = [encoded[m] for m in self.modalities]
    b = (encs[0].pooled if encs[0].pooled is not None else encs[0].tokens).shape[0]
    if present is None:
      present = jnp.ones((b, len(encs)), bool)
    if present.shape != (b, len(encs)):
      raise ValueError(f'fusion: present must have shape [B, M] = {(b, len(encs))} '
                       f'(M in the order {self.modalities}), got {present.shape}')
    return encs, jnp.asarray(present, bool)

  def _pooled(self, encs: list[Encoded], present: jax.Array, fill: float,
              project: bool = False) -> list[jax.Array]:
    """Pooled vectors (optionally projected per modality), missing ones replaced by `fill`."""
    out = []
    for i, (m, e) in enumerate(zip(self.modalities, encs)):
      x = e.pooled.astype(self.dtype)
      if project:
        x = self._dense(x.shape[-1], f'proj_{m}')(x)
      out.append(jnp.where(present[:, i, None], x, jnp.asarray(fill, x.dtype)))
    return out

  def _dense(self, features: int, name: str) -> nn.Dense:
    return nn.Dense(features, dtype=self.dtype, param_dtype=self.param_dtype, name=name)

  def _head(self, x: jax.Array, train: bool, name: str = 'head') -> jax.Array:
    head = MLPHead(hidden=tuple(self.head_hidden), num_classes=self.num_classes,
                   dropout=self.head_dropout, dtype=self.dtype, param_dtype=self.param_dtype,
                   name=name)
    return head(x, train=train).astype(jnp.float32)

  def _finish(self, fused: jax.Array, train: bool, attention: dict, return_attention: bool
              ) -> dict[str, Any]:
    out = {'logits': self._head(fused, train), 'fused': fused}
    if return_attention:
      out['attention'] = attention
    return out


_BUILD_FIELDS = frozenset(f.name for f in dataclasses.fields(_FusionBase))
WHERE = 'config.model.fusion'  # how messages name the fusion config


def _masked_softmax(logits: jax.Array, present: jax.Array, axis: int) -> jax.Array:
  """Softmax over present entries only; all-missing rows give zeros (not NaN)."""
  logits = jnp.where(present, logits.astype(jnp.float32), jnp.finfo(jnp.float32).min)
  return jnp.where(present, jax.nn.softmax(logits, axis=axis), 0.0)


def _present_mean(xs: list[jax.Array], present: jax.Array) -> jax.Array:
  """Mean of xs[i] over the modalities present per example (0 if none is)."""
  total = sum(jnp.where(present[:, i, None], x, 0) for i, x in enumerate(xs))
  count = jnp.maximum(present.sum(axis=1, keepdims=True), 1)
  return (total / count).astype(xs[0].dtype)


# ----------------------------------------------------------------------------- pooled fusions


class ConcatFusion(_FusionBase):
  """Early fusion: concatenate pooled features [B, M*D] (+ M presence flags); missing -> 0."""
  presence_indicator: bool = False
  min_modalities = 1

  @nn.compact
  def __call__(self, encoded, present=None, train: bool = False, return_attention: bool = False):
    encs, present = self._prepare(encoded, present)
    blocks = self._pooled(encs, present, 0.0)
    if self.presence_indicator:
      blocks.append(present.astype(self.dtype))
    return self._finish(jnp.concatenate(blocks, axis=-1), train, {}, return_attention)


class LateFusion(_FusionBase):
  """One head per modality on its pooled features; logits averaged over present modalities."""
  min_modalities = 1

  @nn.compact
  def __call__(self, encoded, present=None, train: bool = False, return_attention: bool = False):
    encs, present = self._prepare(encoded, present)
    logits = [self._head(e.pooled.astype(self.dtype), train, name=f'head_{m}')
              for m, e in zip(self.modalities, encs)]
    out = {'logits': _present_mean(logits, present), 'fused': None}
    if return_attention:
      out['attention'] = {}
    return out


class _ReducedFusion(_FusionBase):
  """Pooled features (optionally projected per modality first) reduced elementwise by
  `_reduce`; a missing modality contributes `fill`."""
  project: bool = False
  fill = 0.0

  def _reduce(self, xs: list[jax.Array], present: jax.Array) -> jax.Array:
    raise NotImplementedError

  @nn.compact
  def __call__(self, encoded, present=None, train: bool = False, return_attention: bool = False):
    encs, present = self._prepare(encoded, present)
    fused = self._reduce(self._pooled(encs, present, self.fill, self.project), present)
    return self._finish(fused, train, {}, return_attention)


class SumFusion(_ReducedFusion):
  """Sum of the present modalities' pooled features (optionally projected first)."""

  def _reduce(self, xs, present):
    return sum(xs)


class MeanFusion(_ReducedFusion):
  """Mean over the present modalities' pooled features (optionally projected first)."""

  def _reduce(self, xs, present):
    return _present_mean(xs, present)


class WeightedFusion(_FusionBase):
  """Learned modality weights, softmax-normalised over the present modalities per example.

  per_feature=False: one scalar weight per modality; True: one weight per modality and
  feature. Weights start equal (zero logits), i.e. at the mean.
  """
  per_feature: bool = False
  project: bool = False

  @nn.compact
  def __call__(self, encoded, present=None, train: bool = False, return_attention: bool = False):
    encs, present = self._prepare(encoded, present)
    xs = jnp.stack(self._pooled(encs, present, 0.0, self.project), axis=1)  # [B, M, D]
    shape = (len(encs), xs.shape[-1]) if self.per_feature else (len(encs), 1)
    logits = self.param('modality_logits', nn.initializers.zeros, shape, self.param_dtype)
    weights = _masked_softmax(jnp.broadcast_to(logits, xs.shape), present[:, :, None], axis=1)
    fused = (weights.astype(self.dtype) * xs).sum(axis=1)
    return self._finish(fused, train, {}, return_attention)


class ProductFusion(_ReducedFusion):
  """Elementwise product of pooled features; a missing modality contributes the identity 1."""
  fill = 1.0

  def _reduce(self, xs, present):
    return math.prod(xs)


class GatedFusion(_FusionBase):
  """Gated multimodal unit (GMU, Arevalo et al. 2017), generalised to M modalities.

  h_m = tanh(W_m x_m); gate logits g_m = W_g^m [x_1; ...; x_M] (missing x -> 0);
  fused = sum_m gate_m * h_m over present m. gate='sigmoid': independent sigmoid gates
  per modality and feature; 'softmax': gates normalised over the present modalities
  (for M=2 this is GMU's z and 1 - z).
  """
  gate: str = 'sigmoid'
  choices = {'gate': GATES}

  @nn.compact
  def __call__(self, encoded, present=None, train: bool = False, return_attention: bool = False):
    encs, present = self._prepare(encoded, present)
    xs = self._pooled(encs, present, 0.0)
    m, d = len(xs), xs[0].shape[-1]
    hs = jnp.stack([jnp.tanh(self._dense(d, f'hidden_{name}')(x))
                    for name, x in zip(self.modalities, xs)], axis=1)  # [B, M, D]
    gates = self._dense(m * d, 'gates')(jnp.concatenate(xs, -1)).reshape(-1, m, d)
    if self.gate == 'sigmoid':
      gates = jnp.where(present[:, :, None], nn.sigmoid(gates), 0)
    else:
      gates = _masked_softmax(gates, present[:, :, None], axis=1)
    fused = (gates.astype(self.dtype) * hs).sum(axis=1)
    return self._finish(fused, train, {}, return_attention)


def _append_one(z: jax.Array, present: jax.Array) -> jax.Array:
  """[z; 1] for a present modality, [0..0; 1] for a missing one (only lower-order terms)."""
  z = jnp.where(present[:, None], z, 0)
  return jnp.concatenate([z, jnp.ones((z.shape[0], 1), z.dtype)], axis=-1)


class TensorFusion(_FusionBase):
  """Tensor fusion (TFN, Zadeh et al. 2017) for M >= 2 modalities.

  Each pooled vector is linearly projected to `proj_dim`, extended with a constant 1 and
  the flattened outer product over modalities (size (proj_dim + 1) ** M, modality order =
  axis order, row-major) is the fused vector: it holds the unimodal, bimodal, ... terms.
  """
  proj_dim: int = 8
  positive = ('proj_dim',)

  @classmethod
  def _check_type(cls, values, num_modalities):
    if num_modalities is not None and (values['proj_dim'] + 1) ** num_modalities > MAX_TENSOR_DIM:
      raise schema.ConfigError(
          f"fusion 'tensor': (proj_dim + 1) ** M = ({values['proj_dim']} + 1) ** "
          f"{num_modalities} exceeds {MAX_TENSOR_DIM}; lower proj_dim or use 'lowrank_tensor'")

  @nn.compact
  def __call__(self, encoded, present=None, train: bool = False, return_attention: bool = False):
    encs, present = self._prepare(encoded, present)
    fused = None
    for i, (m, e) in enumerate(zip(self.modalities, encs)):
      z = _append_one(self._dense(self.proj_dim, f'proj_{m}')(e.pooled.astype(self.dtype)),
                      present[:, i])
      fused = z if fused is None else (fused[:, :, None] * z[:, None, :]).reshape(z.shape[0], -1)
    return self._finish(fused, train, {}, return_attention)


class LowRankTensorFusion(_FusionBase):
  """Low-rank multimodal fusion (LMF, Liu et al. 2018).

  The TFN weight tensor over [x_m; 1] is factorised into `rank` modality-specific factors
  W_m^(r) [D+1, out_dim]: fused = sum_r w_r * prod_m ([x_m; 1] W_m^(r)) + b, [B, out_dim].
  A missing modality becomes [0..0; 1], exactly as in tensor fusion.
  """
  rank: int = 4
  out_dim: int = 32
  positive = ('rank', 'out_dim')

  @nn.compact
  def __call__(self, encoded, present=None, train: bool = False, return_attention: bool = False):
    encs, present = self._prepare(encoded, present)
    init = nn.initializers.variance_scaling(1.0, 'fan_avg', 'normal', in_axis=-2, out_axis=-1,
                                            batch_axis=(0,))  # xavier normal, as LMF
    product = None
    for i, (m, e) in enumerate(zip(self.modalities, encs)):
      z = _append_one(e.pooled.astype(self.dtype), present[:, i])
      factor = self.param(f'factor_{m}', init, (self.rank, z.shape[-1], self.out_dim),
                          self.param_dtype)
      f = jnp.einsum('bi,rio->rbo', z, factor.astype(self.dtype))
      product = f if product is None else product * f
    rank_weights = self.param('rank_weights', nn.initializers.normal(1 / math.sqrt(self.rank)),
                              (self.rank,), self.param_dtype)
    bias = self.param('bias', nn.initializers.zeros, (self.out_dim,), self.param_dtype)
    fused = jnp.einsum('r,rbo->bo', rank_weights.astype(self.dtype), product) + bias.astype(
        self.dtype)
    return self._finish(fused, train, {}, return_attention)


# ----------------------------------------------------------------------------- attention fusions


def sinusoidal_positions(n: int, d: int) -> jax.Array:
  """[n, d] fixed positions as MulT's (fairseq's SinusoidalPositionalEmbedding): positions
  1..n, sines of d//2 geometric frequencies then their cosines, a zero column if d is odd."""
  half = d // 2
  freq = jnp.exp(jnp.arange(half) * -(math.log(10000.0) / max(half - 1, 1)))
  angles = jnp.arange(1, n + 1)[:, None] * freq[None]
  return jnp.pad(jnp.concatenate([jnp.sin(angles), jnp.cos(angles)], axis=1),
                 ((0, 0), (0, d % 2)))


class _AttentionFusionBase(_FusionBase):
  """Shared pieces of the token-level fusions: embeddings, class tokens, pooling; and the
  fields of their transformer layers.

  Token embedding (docs/fusion.md compares it with MulT): x = tokens * (sqrt(d) if
  scale_embeddings) + positions (learned, or fixed sinusoids if sinusoidal_positions) +
  modality embedding, then dropout at `embedding_dropout`.
  """
  num_layers: int = 2
  num_heads: int = 4
  positional_embeddings: bool = True
  sinusoidal_positions: bool = False
  scale_embeddings: bool = False
  embedding_dropout: float = 0.0
  dropout: float = 0.1
  pooling: str = 'cls'
  mlp_ratio: int = 4
  positive = ('num_layers', 'num_heads', 'mlp_ratio')
  choices = {'pooling': POOLINGS}
  fractions = ('embedding_dropout',)

  @classmethod
  def _check_type(cls, values, num_modalities):
    if values['sinusoidal_positions'] and not values['positional_embeddings']:
      raise schema.ConfigError(
          f"fusion {_type_name(cls)!r}: sinusoidal_positions=True needs "
          'positional_embeddings=True (it chooses their kind)')

  def _layer(self, name: str, combine: str = 'residual', shared_norm: bool = False):
    return transformer_layer(self.remat, name=name, num_heads=self.num_heads,
                             mlp_ratio=self.mlp_ratio, dropout=self.dropout, combine=combine,
                             shared_norm=shared_norm, attention=self.attention,
                             dtype=self.dtype, param_dtype=self.param_dtype)

  def _tokens(self, i: int, e: Encoded, present: jax.Array, modality_embedding: bool,
              train: bool = False) -> tuple[jax.Array, jax.Array]:
    """Modality i's embedded tokens (class docstring), and mask & present."""
    m, (_, n, d) = self.modalities[i], e.tokens.shape
    if d % self.num_heads:
      raise ValueError(f'fusion {_type_name(type(self))!r}: token dim {d} of {m!r} is not '
                       f'divisible by num_heads={self.num_heads}')
    x = e.tokens.astype(self.dtype)
    if self.scale_embeddings:
      x = x * jnp.asarray(math.sqrt(d), self.dtype)
    if self.positional_embeddings and self.sinusoidal_positions:
      x = x + sinusoidal_positions(n, d).astype(self.dtype)
    elif self.positional_embeddings:
      x = x + self.param(f'pos_embedding_{m}', _embed_init, (n, d), self.param_dtype
                         ).astype(self.dtype)
    if modality_embedding:
      x = x + self.param(f'modality_embedding_{m}', _embed_init, (d,), self.param_dtype
                         ).astype(self.dtype)
    x = nn.Dropout(self.embedding_dropout, deterministic=not train)(x)
    return x, e.mask.astype(bool) & present[:, i, None]

  def _finish_streams(self, pooled: list[jax.Array], streams: list[int], present: jax.Array,
                      fused: jax.Array, train: bool, attention: dict, return_attention: bool
                      ) -> dict[str, Any]:
    """heads='per_stream' (MBT): a classifier per stream ('head_<modality>'); logits = mean
    of the present streams' logits; objectives.compute averages their losses."""
    logits = jnp.stack([self._head(p, train, f'head_{self.modalities[s]}')
                        for p, s in zip(pooled, streams)])  # [S, B, C]
    valid = present[:, jnp.asarray(streams)]  # [B, S]
    w = valid.T.astype(jnp.float32)[..., None]
    out = {'logits': (logits * w).sum(0) / jnp.maximum(w.sum(0), 1.0), 'fused': fused,
           'stream_logits': logits, 'stream_present': valid}
    if return_attention:
      out['attention'] = attention
    return out

  def _with_cls(self, name: str, x: jax.Array, mask: jax.Array, valid: jax.Array
                ) -> tuple[jax.Array, jax.Array]:
    """Prepends a learned class token (valid where `valid` [B])."""
    b, _, d = x.shape
    cls = self.param(name, _embed_init, (d,), self.param_dtype).astype(self.dtype)
    x = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, d)), x], axis=1)
    return x, jnp.concatenate([valid[:, None], mask], axis=1)

  def _pool(self, name: str, x: jax.Array, mask: jax.Array) -> jax.Array:
    """Final LayerNorm, then the class token (position 0) or the mean over valid tokens.

    A stream with no valid token (its modality is missing) pools to 0.
    """
    x = nn.LayerNorm(dtype=self.dtype, param_dtype=self.param_dtype, name=name)(x)
    if self.pooling == 'cls':
      return jnp.where(mask[:, :1], x[:, 0], 0)
    w = mask.astype(x.dtype)[..., None]
    return ((x * w).sum(1) / jnp.maximum(w.sum(1), 1)).astype(x.dtype)


class CrossAttentionFusion(_AttentionFusionBase):
  """Cross-modal attention block (MulT, Tsai et al. 2019): queries from a target modality,
  keys/values from a source modality.

  With modalities (a, b) = (modalities[0], modalities[1]), `direction` uses MulT's
  source->target notation: 'a->b' means b is the target (b's tokens are the queries, a's
  tokens the keys/values: b attends to a), 'b->a' the reverse, and 'both' makes every
  modality a target that attends to every other one (the only choice for M > 2: each
  target attends to each other source with its own attention, MulT-style).
  A cross layer for target state s (with per-source outputs h_i) computes
    combine='concat_proj': z = [h_1; ...; h_k; s] W_O    combine='residual': z = s + sum_i h_i
  then z + MLP(LN(z)), pre-LN with dropout. kv_source='first_layer': keys/values are the
  sources' (embedded) encoder tokens at every layer, as in MulT; 'updated': the sources'
  states after the previous layer, i.e. their own target streams (direction='both') or,
  for a source that is not a target, a self-attention layer per cross layer.
  With `unimodal_layers` > 0, each modality first runs that many self-attention layers over
  its own tokens (MBT's layers below its fusion layer), so that a token can carry what its
  neighbours show before it is compared across modalities; the cross layers read these tokens.
  After `num_layers` cross layers, each target stream runs `self_attention_layers`
  self-attention layers (MulT's final transformer; required for pooling='cls', since
  cross-attention alone never mixes the target's own tokens into its class token), a final
  LayerNorm and pooling. fused = concatenation of the pooled targets, [B, targets * D].
  Class tokens are never keys. Attention keys: 'cross_{l}/{source}->{target}',
  'unimodal_{l}/{modality}', 'source_self_{l}/{source}', 'self_{j}/{target}'.
  """
  direction: str = 'both'
  kv_source: str = 'first_layer'
  combine: str = 'concat_proj'
  shared_norm: bool = False
  self_attention_layers: int = 1
  unimodal_layers: int = 0
  modality_embeddings: bool = True
  heads: str = 'shared'
  choices = {'direction': DIRECTIONS, 'kv_source': KV_SOURCES, 'combine': COMBINES,
             'pooling': POOLINGS, 'heads': HEADS}
  non_negative = ('self_attention_layers', 'unimodal_layers')

  @classmethod
  def _check_type(cls, values, num_modalities):
    super()._check_type(values, num_modalities)
    if values['pooling'] == 'cls' and values['self_attention_layers'] == 0:
      raise schema.ConfigError(
          "fusion 'crossattn': pooling='cls' needs self_attention_layers >= 1 (cross-attention "
          "alone never mixes the target's tokens into its class token); use pooling='mean' or "
          'self_attention_layers >= 1')
    if values['kv_source'] == 'updated' and values['num_layers'] < 2:
      raise schema.ConfigError(
          "fusion 'crossattn': kv_source='updated' differs from 'first_layer' only from the "
          "second cross layer on; set num_layers >= 2 or use kv_source='first_layer'")
    if num_modalities is not None and num_modalities != 2 and values['direction'] != 'both':
      raise schema.ConfigError(
          f"fusion 'crossattn': direction={values['direction']!r} is defined for exactly 2 "
          f"modalities, got {num_modalities}; use direction='both' (every modality attends to "
          'every other)')

  def _routes(self) -> tuple[list[int], dict[int, list[int]]]:
    """Target modality indices and, per target, its source indices."""
    m = len(self.modalities)
    if self.direction == 'a->b':
      return [1], {1: [0]}
    if self.direction == 'b->a':
      return [0], {0: [1]}
    return list(range(m)), {t: [s for s in range(m) if s != t] for t in range(m)}

  @nn.compact
  def __call__(self, encoded, present=None, train: bool = False, return_attention: bool = False):
    encs, present = self._prepare(encoded, present)
    names = self.modalities
    targets, sources = self._routes()
    tokens, masks = zip(*[self._tokens(i, e, present, self.modality_embeddings, train)
                          for i, e in enumerate(encs)])
    attention = {}
    tokens = list(tokens)
    for i, m in enumerate(names):
      for layer in range(self.unimodal_layers):
        tokens[i], ws = self._layer(f'unimodal_{layer}_{m}')(
            tokens[i], mask=masks[i], train=train, return_weights=return_attention)
        if ws:
          attention[f'unimodal_{layer}/{m}'] = ws[0]
    cls = self.pooling == 'cls'
    states, state_masks = dict(enumerate(tokens)), dict(enumerate(masks))
    for t in targets:  # target streams carry their class token at position 0
      if cls:
        states[t], state_masks[t] = self._with_cls(f'cls_{names[t]}', tokens[t], masks[t],
                                                   present[:, t])
    offset = {i: int(cls and i in targets) for i in range(len(encs))}  # strip class tokens
    updated_sources = ([s for s in sorted({s for v in sources.values() for s in v})
                        if s not in targets] if self.kv_source == 'updated' else [])
    for layer in range(self.num_layers):
      if self.kv_source == 'first_layer':
        kv = {s: (tokens[s], masks[s]) for s in range(len(encs))}
      else:
        kv = {s: (states[s][:, offset[s]:], state_masks[s][:, offset[s]:])
              for s in range(len(encs))}
      new = {}
      for t in targets:
        new[t], ws = self._layer(f'cross_{layer}_{names[t]}', self.combine, self.shared_norm)(
            states[t], [kv[s][0] for s in sources[t]], mask=state_masks[t],
            context_masks=[kv[s][1] for s in sources[t]], train=train,
            return_weights=return_attention)
        for s, w in zip(sources[t], ws or []):
          attention[f'cross_{layer}/{names[s]}->{names[t]}'] = w
      for s in (updated_sources if layer < self.num_layers - 1 else []):  # last: unused
        new[s], ws = self._layer(f'source_self_{layer}_{names[s]}')(
            states[s], mask=state_masks[s], train=train, return_weights=return_attention)
        if ws:
          attention[f'source_self_{layer}/{names[s]}'] = ws[0]
      states.update(new)
    pooled = []
    for t in targets:
      x = states[t]
      for j in range(self.self_attention_layers):
        x, ws = self._layer(f'self_{j}_{names[t]}')(
            x, mask=state_masks[t], train=train, return_weights=return_attention)
        if ws:
          attention[f'self_{j}/{names[t]}'] = ws[0]
      pooled.append(self._pool(f'norm_{names[t]}', x, state_masks[t]))
    fused = jnp.concatenate(pooled, axis=-1)
    if self.heads == 'per_stream':
      return self._finish_streams(pooled, targets, present, fused, train, attention,
                                  return_attention)
    return self._finish(fused, train, attention, return_attention)


class JointAttentionFusion(_AttentionFusionBase):
  """Self-attention over the concatenated tokens of all modalities (one shared stack).

  Tokens get optional learned per-modality and per-position embeddings; with pooling='cls' a
  shared class token is prepended (always valid, so it attends at least to itself).
  fused [B, D]. Attention keys: 'layer_{l}', weights over [class token;] tokens of
  modalities[0]; tokens of modalities[1]; ...
  """
  modality_embeddings: bool = True

  @nn.compact
  def __call__(self, encoded, present=None, train: bool = False, return_attention: bool = False):
    encs, present = self._prepare(encoded, present)
    tokens, masks = zip(*[self._tokens(i, e, present, self.modality_embeddings, train)
                          for i, e in enumerate(encs)])
    x, mask = jnp.concatenate(tokens, axis=1), jnp.concatenate(masks, axis=1)
    if self.pooling == 'cls':
      x, mask = self._with_cls('cls', x, mask, jnp.ones(x.shape[:1], bool))
    attention = {}
    for layer in range(self.num_layers):
      x, ws = self._layer(f'layer_{layer}')(x, mask=mask, train=train,
                                            return_weights=return_attention)
      if ws:
        attention[f'layer_{layer}'] = ws[0]
    return self._finish(self._pool('norm', x, mask), train, attention, return_attention)


class BottleneckFusion(_AttentionFusionBase):
  """Attention bottlenecks (MBT, Nagrani et al. 2021).

  Each modality has its own transformer stream (own weights). Layers < fusion_layer are
  unimodal self-attention; from layer `fusion_layer` on, each modality attends over
  [its tokens; num_bottlenecks shared bottleneck tokens] and the shared bottleneck becomes
  the average of the per-modality bottleneck updates over the present modalities.
  fusion_layer=0: every layer fused (early); fusion_layer=num_layers: no exchange (late;
  num_bottlenecks then has no effect). Per-modality pooled features (class token or mean)
  are averaged over present modalities: fused [B, D]. Attention keys: 'layer_{l}/{m}'.
  """
  fusion_layer: int = 1
  num_bottlenecks: int = 4
  heads: str = 'shared'
  positive = ('num_layers', 'num_heads', 'mlp_ratio', 'num_bottlenecks')
  non_negative = ('fusion_layer',)
  choices = {'pooling': POOLINGS, 'heads': HEADS}

  @classmethod
  def _check_type(cls, values, num_modalities):
    super()._check_type(values, num_modalities)
    if not 0 <= values['fusion_layer'] <= values['num_layers']:
      raise schema.ConfigError(
          f"fusion 'bottleneck': fusion_layer={values['fusion_layer']} must be in "
          f"[0, num_layers={values['num_layers']}] (0 = early, num_layers = late)")
    default = cls.config_defaults()['num_bottlenecks']
    if values['fusion_layer'] == values['num_layers'] and values['num_bottlenecks'] != default:
      raise schema.ConfigError(
          f"fusion 'bottleneck': num_bottlenecks={values['num_bottlenecks']} has no effect "
          f"with fusion_layer = num_layers = {values['num_layers']} (no layer exchanges "
          'through the bottleneck); leave it at its default or lower fusion_layer')

  @nn.compact
  def __call__(self, encoded, present=None, train: bool = False, return_attention: bool = False):
    encs, present = self._prepare(encoded, present)
    names = self.modalities
    xs, masks = [], []
    for i, e in enumerate(encs):
      x, mask = self._tokens(i, e, present, False, train)
      if self.pooling == 'cls':
        x, mask = self._with_cls(f'cls_{names[i]}', x, mask, present[:, i])
      xs.append(x)
      masks.append(mask)
    b, d = xs[0].shape[0], xs[0].shape[-1]
    bottleneck = None
    if self.fusion_layer < self.num_layers:
      bottleneck = jnp.broadcast_to(
          self.param('bottleneck', _embed_init, (self.num_bottlenecks, d), self.param_dtype
                     ).astype(self.dtype), (b, self.num_bottlenecks, d))
    attention = {}
    for layer in range(self.num_layers):
      fused_layer = layer >= self.fusion_layer
      updates = []
      for i, m in enumerate(names):
        x, mask, n = xs[i], masks[i], xs[i].shape[1]
        if fused_layer:
          x = jnp.concatenate([x, bottleneck], axis=1)
          mask = jnp.concatenate([mask, jnp.ones((b, self.num_bottlenecks), bool)], axis=1)
        x, ws = self._layer(f'layer_{layer}_{m}')(x, mask=mask, train=train,
                                                  return_weights=return_attention)
        if ws:
          attention[f'layer_{layer}/{m}'] = ws[0]
        xs[i] = x[:, :n]
        updates.append(x[:, n:])
      if fused_layer:  # average over present modalities; keep the old one if none is present
        any_present = present.any(axis=1)[:, None, None]
        mean = _present_mean([u.reshape(b, -1) for u in updates], present).reshape(bottleneck.shape)
        bottleneck = jnp.where(any_present, mean, bottleneck)
    pooled = [self._pool(f'norm_{m}', x, mask) for m, x, mask in zip(names, xs, masks)]
    fused = _present_mean(pooled, present)
    if self.heads == 'per_stream':
      return self._finish_streams(pooled, list(range(len(names))), present, fused, train,
                                  attention, return_attention)
    return self._finish(fused, train, attention, return_attention)


# ----------------------------------------------------------------------------- registry

FUSIONS: dict[str, type[_FusionBase]] = {
    'concat': ConcatFusion,
    'late': LateFusion,
    'sum': SumFusion,
    'mean': MeanFusion,
    'weighted': WeightedFusion,
    'product': ProductFusion,
    'gated': GatedFusion,
    'tensor': TensorFusion,
    'lowrank_tensor': LowRankTensorFusion,
    'crossattn': CrossAttentionFusion,
    'joint': JointAttentionFusion,
    'bottleneck': BottleneckFusion,
}


def _type_name(cls: type) -> str:
  return next((k for k, v in FUSIONS.items() if v is cls), cls.__name__)


def _lookup(fusion_type: str) -> type[_FusionBase]:
  if fusion_type not in FUSIONS:
    raise schema.ConfigError(f'{WHERE}.type={fusion_type!r}: valid choices: {tuple(FUSIONS)}')
  return FUSIONS[fusion_type]


def uses_tokens(fusion_type: str) -> bool:
  """Whether the fusion reads `Encoded.tokens` (attention types) or only `pooled`."""
  return issubclass(_lookup(fusion_type), _AttentionFusionBase)


def fusion_config(fusion_type: str, **overrides) -> ml_collections.ConfigDict:
  """ConfigDict with `type` plus exactly that fusion's fields and defaults (+ overrides)."""
  return ml_collections.ConfigDict({'type': fusion_type,
                                    **_lookup(fusion_type).check(overrides)})


def check_config(cfg: ml_collections.ConfigDict | Mapping[str, Any],
                 num_modalities: int | None = None) -> tuple[type[_FusionBase], dict[str, Any]]:
  """(fusion class, its resolved fields) of `config.model.fusion`; ConfigError naming every
  bad field (for `num_modalities` modalities, when given)."""
  values = schema.as_dict(cfg)
  if 'type' not in values:
    raise schema.ConfigError(f'{WHERE} has no type; valid choices: {tuple(FUSIONS)}')
  cls = _lookup(values.pop('type'))
  return cls, cls.check(values, num_modalities)


def build_fusion(cfg: ml_collections.ConfigDict | Mapping[str, Any], *,
                 modalities: tuple[str, ...] | list[str], num_classes: int,
                 head_hidden: tuple[int, ...] = (), dropout: float = 0.0,
                 dtype: Any = jnp.float32, param_dtype: Any = jnp.float32,
                 attention: str = 'einsum', remat: str = 'none',
                 name: str | None = None) -> _FusionBase:
  """Fusion module for `cfg` (a `fusion_config`), validated against the modality count.

  `dropout` is the classifier head's dropout (config.model.dropout); attention fusions
  have their own `dropout` field for their transformer layers.
  """
  modalities = tuple(modalities)
  if len(set(modalities)) != len(modalities):
    raise schema.ConfigError(f'config.model.modalities has duplicates: {modalities}')
  cls, values = check_config(cfg, len(modalities))
  return cls(modalities=modalities, num_classes=num_classes, head_hidden=tuple(head_hidden),
             head_dropout=dropout, dtype=dtype, param_dtype=param_dtype, attention=attention,
             remat=remat, name=name, **values)
