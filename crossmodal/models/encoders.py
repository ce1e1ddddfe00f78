"""Per-modality encoders (image, audio, text) behind one config-driven registry.

Every encoder maps its raw modality input to an `Encoded` of width D (`config.model.dim`) so
fusion modules treat all modalities alike. An encoder's config is derived from the module's
own dataclass fields (`encoder_config`), so the config lists exactly the switches that
encoder accepts, a switch meant for another encoder is rejected, and an ablation is one
override.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping, Sequence
from typing import Any, ClassVar

import flax.linen as nn
import flax.struct
import jax
import jax.numpy as jnp
import ml_collections

from crossmodal import schema
from crossmodal.data import features as features_lib
from crossmodal.models import attention
from crossmodal.models import conv as conv_lib
from crossmodal.models import text as text_lib


@flax.struct.dataclass
class Encoded:
  """Encoder output: per-token features, which tokens are real, and one pooled vector.

  tokens: [B, N, D]; mask: [B, N] bool (True = real token); pooled: [B, D].
  """
  tokens: jax.Array
  mask: jax.Array
  pooled: jax.Array


NORMS = ('batch', 'layer', 'group', 'none')
CONV_POOLS = ('avg', 'flatten')
TOKEN_POOLS = ('cls', 'mean')
# Which LeNet stages run (see lenet_trunk): 'auto' is 'full' when something reads the
# pooled vector and 'to_token_stage' when only tokens are read (attention fusions).
TRUNKS = ('auto', 'full', 'to_token_stage')
FEATURIZERS = ('log_mel', 'mfcc')

_conv_init = nn.initializers.variance_scaling(2.0, 'fan_in', 'uniform')  # torch kaiming_uniform_
_embed_init = nn.initializers.normal(stddev=0.02)


class _EncoderBase(nn.Module):
  """Fields every encoder gets from the model (build_encoder), not from its own config.

  Subclass fields are the encoder's config; CHOICES lists the valid values of string fields.
  """
  CHOICES: ClassVar[Mapping[str, tuple[str, ...]]] = {}
  dim: int
  dtype: Any = jnp.float32  # compute dtype (bfloat16 for mixed precision)
  param_dtype: Any = jnp.float32
  axis_name: str | None = None  # pmap axis over which BatchNorm averages statistics
  # False when the fusion reads only `pooled`: conv encoders then skip their token projection
  # (its parameters would be created and never used) and return tokens=None, mask=None.
  with_tokens: bool = True
  # False when nothing reads `pooled` (attention fusions): conv encoders then stop at the token
  # stage and skip their pooled projection (later stages and pool_proj would never reach the
  # loss) and return pooled=None.
  with_pooled: bool = True
  # config.model.attention / .remat (models/attention.py), for the transformer encoders.
  attention: str = 'einsum'
  remat: str = 'none'

  @property
  def _kw(self) -> dict[str, Any]:
    return dict(dtype=self.dtype, param_dtype=self.param_dtype)


_BUILD_FIELDS = tuple(f.name for f in dataclasses.fields(_EncoderBase))  # incl. parent, name


# ----------------------------------------------------------------------------- building blocks
# Plain functions called inside an encoder's @compact method, so layers belong to that encoder.


def _conv(enc: _EncoderBase, features: int, kernel: int, strides: int = 1,
          use_bias: bool = False, name: str | None = None) -> nn.Conv:
  return nn.Conv(features, (kernel, kernel), strides=strides, padding='SAME',
                 use_bias=use_bias, kernel_init=_conv_init, name=name,
                 conv_general_dilated=conv_lib.conv_general_dilated, **enc._kw)


def _normalize(enc: _EncoderBase, kind: str, x: jax.Array, train: bool, name: str) -> jax.Array:
  """Normalises a [B, H, W, C] map; 'batch' averages statistics over `enc.axis_name`."""
  if kind == 'batch':
    # momentum/epsilon match torch.nn.BatchNorm2d defaults (MultiBench comparability).
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5,
                        axis_name=enc.axis_name, name=name, **enc._kw)(x)
  if kind == 'layer':  # per position, over channels (ConvNeXt-style)
    return nn.LayerNorm(epsilon=1e-5, name=name, **enc._kw)(x)
  if kind == 'group':
    return nn.GroupNorm(num_groups=math.gcd(x.shape[-1], 32), epsilon=1e-5, name=name,
                        **enc._kw)(x)
  return x  # 'none' (validated by the caller)


def _image_to_float(enc: _EncoderBase, images: jax.Array) -> jax.Array:
  """uint8 [B,H,W,C] -> [0, 1] -> (x - pixel_mean) / pixel_std in the compute dtype.

  Float input is taken as already scaled to [0, 1].
  """
  who = type(enc).__name__
  if images.ndim != 4:
    raise ValueError(f'{who} expects images [B, H, W, C], got shape {images.shape}')
  channels = images.shape[-1]
  stats = {'pixel_mean': enc.pixel_mean, 'pixel_std': enc.pixel_std}
  for field, value in stats.items():
    if len(value) not in (1, channels):
      raise ValueError(f'{who}.{field} needs 1 or C={channels} values, got {value}')
  x = images.astype(jnp.float32)
  if jnp.issubdtype(images.dtype, jnp.integer):
    x = x / 255.0
  x = (x - jnp.asarray(enc.pixel_mean, jnp.float32)) / jnp.asarray(enc.pixel_std, jnp.float32)
  return x.astype(enc.dtype)


def _lenet_trunk(enc: _EncoderBase, x: jax.Array, train: bool,
                 num_stages: int | None = None) -> list[jax.Array]:
  """MultiBench LeNet(in, base_channels, extra_layers): conv5x5 then `extra_layers` conv3x3,
  channels doubling from `base_channels`, each followed by norm, ReLU and 2x2 max-pool.
  Convs carry no bias when a norm follows (as MultiBench). Returns the output of each of the
  first `num_stages` stages (default all)."""
  stages = []
  for i in range(enc.extra_layers + 1 if num_stages is None else num_stages):
    h, w = x.shape[1:3]
    if h < 2 or w < 2:
      raise ValueError(f'{type(enc).__name__}: extra_layers={enc.extra_layers} pools the input '
                       f'to a {h}x{w} map before layer {i}; use extra_layers <= {i - 1}')
    x = _conv(enc, enc.base_channels * 2**i, 5 if i == 0 else 3, use_bias=enc.norm == 'none',
              name=f'conv_{i}')(x)
    x = _normalize(enc, enc.norm, x, train, name=f'norm_{i}')
    x = conv_lib.max_pool_2x2(nn.relu(x))
    stages.append(x)
  return stages


def lenet_trunk(enc: _EncoderBase) -> dict[str, Any]:
  """Which stages a LeNet encoder runs, as run_info.json records it.

  'full': every stage; pooled from the final map, tokens from `token_stage`. When the tokens
    are read (attention fusions) and come from an earlier stage, the pooled vector joins them
    as one more token (`summary_token`), so that the later stages reach the loss and every
    fusion type reads the same trunk.
  'to_token_stage': the stages up to `token_stage`; the pooled vector (if read) comes from the
    token stage's map.
  'auto': every stage if the pooled vector is read (without the summary token), else
    'to_token_stage': the trunks of the fusion study before the `trunk` switch.
  """
  n = enc.extra_layers + 1
  if not -n <= enc.token_stage < n:
    raise ValueError(f'{type(enc).__name__}.token_stage={enc.token_stage} is out of range for '
                     f'{n} conv stages (extra_layers={enc.extra_layers}); valid: {-n}..{n - 1}')
  token_stage = enc.token_stage % n
  trunk = enc.trunk if enc.trunk != 'auto' else (
      'full' if enc.with_pooled else 'to_token_stage')
  stages = n if trunk == 'full' else token_stage + 1
  return {'trunk': trunk, 'stages': stages, 'of': n, 'token_stage': token_stage,
          'summary_token': bool(enc.trunk == 'full' and enc.with_tokens
                                and stages > token_stage + 1)}


def _lenet_encoded(enc: _EncoderBase, x: jax.Array, train: bool) -> Encoded:
  """LeNet trunk (lenet_trunk says which stages); pooled from its final map (as MultiBench),
  tokens from `token_stage`."""
  t = lenet_trunk(enc)
  maps = _lenet_trunk(enc, x, train, t['stages'])
  return _map_to_encoded(enc, maps[-1], maps[t['token_stage']], t['summary_token'])


def _map_to_encoded(enc: _EncoderBase, fmap: jax.Array, token_map: jax.Array,
                    summary_token: bool = False) -> Encoded:
  """Conv maps [B,h,w,C] -> tokens (positions of `token_map` projected to D, then the pooled
  vector as one more token if `summary_token`) and pooled (`fmap` globally averaged or
  flattened, then projected to D)."""
  default_pool = next(f.default for f in dataclasses.fields(enc) if f.name == 'pool')
  if not (enc.with_tokens or enc.with_pooled):
    raise ValueError(f'{type(enc).__name__}: with_tokens and with_pooled are both False')
  b, h, w, c = token_map.shape
  if not (enc.with_pooled or summary_token):
    if enc.pool != default_pool:
      raise ValueError(f'{type(enc).__name__}: pool={enc.pool!r} has no effect with an '
                       f'attention fusion (it reads tokens, not the pooled vector); leave pool '
                       f'at {default_pool!r}')
    tokens = nn.Dense(enc.dim, name='token_proj', **enc._kw)(token_map.reshape(b, h * w, c))
    return Encoded(tokens=tokens, mask=jnp.ones((b, h * w), bool), pooled=None)
  if fmap.shape[1:3] == (1, 1) and enc.pool != default_pool:
    raise ValueError(f'{type(enc).__name__}: pool={enc.pool!r} has no effect on a 1x1 final '
                     f'map (avg and flatten agree); leave pool at {default_pool!r}, or use a '
                     'larger input or fewer layers')
  if enc.pool == 'avg':
    summary = fmap.mean(axis=(1, 2))
  else:  # 'flatten': MultiBench flattens the final map (1x1 on AV-MNIST)
    summary = fmap.reshape(b, -1)
  pooled = nn.Dense(enc.dim, name='pool_proj', **enc._kw)(summary)
  if not enc.with_tokens:
    return Encoded(tokens=None, mask=None, pooled=pooled)
  tokens = nn.Dense(enc.dim, name='token_proj', **enc._kw)(token_map.reshape(b, h * w, c))
  if summary_token:
    tokens = jnp.concatenate([tokens, pooled[:, None].astype(tokens.dtype)], axis=1)
  return Encoded(tokens=tokens, mask=jnp.ones(tokens.shape[:2], bool), pooled=pooled)


def _transformer(enc: _EncoderBase, tokens: jax.Array, mask: jax.Array, train: bool,
                 add_positions: bool = True) -> Encoded:
  """Shared ViT / AST / text trunk: learned positions, optional class token, pre-LN layers
  (attention.TransformerLayer, so masking is defined once), final LayerNorm.

  Returned tokens exclude the class token; pooled = class token or masked mean.
  """
  who = type(enc).__name__
  if enc.dim % enc.num_heads:
    raise ValueError(f'{who}: model dim {enc.dim} is not divisible by num_heads={enc.num_heads}')
  b, n, d = tokens.shape
  if add_positions:
    pos = enc.param('pos_embedding', _embed_init, (1, n, d), enc.param_dtype)
    tokens = tokens + pos.astype(enc.dtype)
  if enc.pool == 'cls':
    cls = enc.param('cls_token', _embed_init, (1, 1, d), enc.param_dtype).astype(enc.dtype)
    tokens = jnp.concatenate([jnp.broadcast_to(cls, (b, 1, d)), tokens], axis=1)
    mask = jnp.concatenate([jnp.ones((b, 1), bool), mask], axis=1)
  x = nn.Dropout(enc.dropout, deterministic=not train)(tokens)
  for i in range(enc.depth):
    x, _ = attention.transformer_layer(
        enc.remat, name=f'layer_{i}', num_heads=enc.num_heads, mlp_ratio=enc.mlp_ratio,
        dropout=enc.dropout, attention=enc.attention, **enc._kw)(x, mask=mask, train=train)
  x = nn.LayerNorm(name='final_norm', **enc._kw)(x)
  if enc.pool == 'cls':
    return Encoded(tokens=x[:, 1:], mask=mask[:, 1:], pooled=x[:, 0])
  weights = mask.astype(x.dtype)[..., None]
  pooled = (x * weights).sum(axis=1) / jnp.maximum(weights.sum(axis=1), 1)
  return Encoded(tokens=x, mask=mask, pooled=pooled)


def _patch_embed(enc: _EncoderBase, x: jax.Array, patch: tuple[int, int],
                 stride: tuple[int, int]) -> jax.Array:
  """[B,H,W,C] -> [B, N, D] patch embeddings (a linear map of each patch, via strided conv)."""
  patch, stride = tuple(patch), tuple(stride)
  h, w = x.shape[1:3]
  if len(patch) != 2 or len(stride) != 2:
    raise ValueError(f'{type(enc).__name__}: patch size/stride need 2 values, got {patch}, '
                     f'{stride}')
  if h < patch[0] or w < patch[1]:
    raise ValueError(f'{type(enc).__name__}: input {h}x{w} is smaller than patch {patch}')
  y = nn.Conv(enc.dim, patch, strides=stride, padding='VALID', name='patch_embed',
              **enc._kw)(x)
  return y.reshape(y.shape[0], -1, enc.dim)


# ----------------------------------------------------------------------------- image


class ImageLeNet(_EncoderBase):
  """MultiBench AV-MNIST image encoder: LeNet(1, 6, 3) on 28x28 (final map 1x1x48).

  The final map is a single token; attention fusions get more with token_stage=2 (3x3x24).
  pixel_mean/std default to no normalisation: MultiBench feeds pixels scaled to [0, 1].
  """
  CHOICES: ClassVar[Mapping[str, tuple[str, ...]]] = {
      'norm': NORMS, 'pool': CONV_POOLS, 'trunk': TRUNKS}
  base_channels: int = 6
  extra_layers: int = 3
  norm: str = 'batch'
  pool: str = 'flatten'
  token_stage: int = -1  # conv stage whose map gives the tokens (-1: final, 1x1 on 28x28)
  trunk: str = 'auto'  # TRUNKS; which stages run (lenet_trunk)
  pixel_mean: tuple[float, ...] = (0.0,)
  pixel_std: tuple[float, ...] = (1.0,)

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> Encoded:
    x = _image_to_float(self, images)
    return _lenet_encoded(self, x, train)


class ImageCNN(_EncoderBase):
  """ResNet-style CNN: 3x3 stem, then stages of residual basic blocks; every stage after the
  first halves the resolution. A stronger image baseline than LeNet."""
  CHOICES: ClassVar[Mapping[str, tuple[str, ...]]] = {'norm': NORMS, 'pool': CONV_POOLS}
  widths: tuple[int, ...] = (32, 64, 128)
  blocks_per_stage: int = 1
  norm: str = 'batch'
  pool: str = 'avg'
  pixel_mean: tuple[float, ...] = (0.5,)
  pixel_std: tuple[float, ...] = (0.5,)

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> Encoded:
    if not self.widths or self.blocks_per_stage < 1:
      raise ValueError(f'ImageCNN needs widths (got {self.widths}) and blocks_per_stage >= 1 '
                       f'(got {self.blocks_per_stage})')
    bias = self.norm == 'none'
    x = _image_to_float(self, images)
    x = _conv(self, self.widths[0], 3, use_bias=bias, name='stem_conv')(x)
    x = nn.relu(_normalize(self, self.norm, x, train, name='stem_norm'))
    for s, width in enumerate(self.widths):
      for b in range(self.blocks_per_stage):
        strides = 2 if (s > 0 and b == 0) else 1
        p = f'stage{s}_block{b}'
        y = _conv(self, width, 3, strides, use_bias=bias, name=f'{p}_conv0')(x)
        y = nn.relu(_normalize(self, self.norm, y, train, name=f'{p}_norm0'))
        y = _conv(self, width, 3, use_bias=bias, name=f'{p}_conv1')(y)
        y = _normalize(self, self.norm, y, train, name=f'{p}_norm1')
        if x.shape != y.shape:  # projection shortcut
          x = _conv(self, width, 1, strides, use_bias=bias, name=f'{p}_proj')(x)
          x = _normalize(self, self.norm, x, train, name=f'{p}_proj_norm')
        x = nn.relu(x + y)
    return _map_to_encoded(self, x, x)


class _TransformerEncoderBase(_EncoderBase):
  """Fields of every transformer encoder (_transformer): layers, heads, MLP ratio, dropout."""
  depth: int = 2
  num_heads: int = 4
  mlp_ratio: int = 4
  dropout: float = 0.0


class ImageViT(_TransformerEncoderBase):
  """ViT: non-overlapping patches linearly embedded to D, learned positions, pre-LN layers."""
  CHOICES: ClassVar[Mapping[str, tuple[str, ...]]] = {'pool': TOKEN_POOLS}
  patch_size: int = 4
  pool: str = 'cls'
  pixel_mean: tuple[float, ...] = (0.5,)
  pixel_std: tuple[float, ...] = (0.5,)

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> Encoded:
    x = _image_to_float(self, images)
    p = (self.patch_size, self.patch_size)
    tokens = _patch_embed(self, x, p, p)
    return _transformer(self, tokens, jnp.ones(tokens.shape[:2], bool), train)


# ----------------------------------------------------------------------------- audio


def _spectrogram(enc: _EncoderBase, waveform: jax.Array) -> jax.Array:
  """Raw waveform [B, T] -> standardised log-mel / MFCC image [B, frames, bins, 1].

  Features are computed in float32 (FFTs are poor in bfloat16), then cast to the compute dtype.
  """
  who = type(enc).__name__
  if waveform.ndim != 2:
    raise ValueError(f'{who} expects a raw waveform [B, T], got shape {waveform.shape}')
  cfg = enc.features if enc.features is not None else features_lib.features_config()
  featurize = {'log_mel': features_lib.log_mel, 'mfcc': features_lib.mfcc}[enc.featurizer]
  spec = featurize(waveform.astype(jnp.float32), cfg)
  spec = (spec - enc.spec_mean) / enc.spec_std
  return spec[..., None].astype(enc.dtype)


class _AudioEncoderBase(_EncoderBase):
  """Fields of every audio encoder: how the waveform becomes a spectrogram (_spectrogram)."""
  featurizer: str = 'log_mel'
  features: Any = None  # ConfigDict from crossmodal.data.features.features_config()
  spec_mean: float = -66.6  # log-mel dB statistics measured on FSDD (re-measure for mfcc)
  spec_std: float = 24.2


class AudioLeNet(_AudioEncoderBase):
  """MultiBench AV-MNIST audio encoder: LeNet(1, 6, 5) on the spectrogram, featurized on
  device from the raw waveform. The final map is 1x1x192 (on MultiBench's 112x112 and on our
  101x64 log-mel of 1 s); token_stage=3 gives 6x4 tokens for attention fusions."""
  CHOICES: ClassVar[Mapping[str, tuple[str, ...]]] = {
      'norm': NORMS, 'pool': CONV_POOLS, 'featurizer': FEATURIZERS, 'trunk': TRUNKS}
  base_channels: int = 6
  extra_layers: int = 5
  norm: str = 'batch'
  pool: str = 'flatten'
  token_stage: int = -1  # conv stage whose map gives the tokens (-1: final, 1x1 on 101x64)
  trunk: str = 'auto'  # TRUNKS; which stages run (lenet_trunk)

  @nn.compact
  def __call__(self, waveform: jax.Array, train: bool = False) -> Encoded:
    x = _spectrogram(self, waveform)
    return _lenet_encoded(self, x, train)


class AudioAST(_AudioEncoderBase, _TransformerEncoderBase):
  """Audio Spectrogram Transformer: time x frequency patches of the log-mel (overlapping when
  patch_stride < patch_size, as in AST), learned positions, pre-LN layers."""
  CHOICES: ClassVar[Mapping[str, tuple[str, ...]]] = {
      'pool': TOKEN_POOLS, 'featurizer': FEATURIZERS}
  patch_size: tuple[int, int] = (16, 16)  # (frames, bins): 6 x 4 patches of 101 x 64 log-mel
  patch_stride: tuple[int, int] = (16, 16)
  pool: str = 'cls'

  @nn.compact
  def __call__(self, waveform: jax.Array, train: bool = False) -> Encoded:
    x = _spectrogram(self, waveform)
    tokens = _patch_embed(self, x, self.patch_size, self.patch_stride)
    return _transformer(self, tokens, jnp.ones(tokens.shape[:2], bool), train)


# ----------------------------------------------------------------------------- text


class TextTransformer(_TransformerEncoderBase):
  """Byte-token transformer (ids from models/text.py); PAD_ID tokens are masked everywhere."""
  CHOICES: ClassVar[Mapping[str, tuple[str, ...]]] = {'pool': TOKEN_POOLS}
  vocab_size: int = text_lib.VOCAB_SIZE
  max_len: int = 64
  pool: str = 'mean'

  @nn.compact
  def __call__(self, ids: jax.Array, train: bool = False) -> Encoded:
    if ids.ndim != 2 or not jnp.issubdtype(ids.dtype, jnp.integer):
      raise ValueError(f'TextTransformer expects integer ids [B, L], got {ids.dtype} '
                       f'{ids.shape}')
    if ids.shape[1] > self.max_len:
      raise ValueError(f'TextTransformer: text length {ids.shape[1]} exceeds max_len='
                       f'{self.max_len}; raise encoders.text.max_len or encode shorter text')
    mask = ids != text_lib.PAD_ID
    tokens = nn.Embed(self.vocab_size, self.dim, embedding_init=_embed_init, name='embed',
                      **self._kw)(ids)
    # Positions for up to max_len tokens, so any padded length <= max_len works.
    pos = self.param('pos_embedding', _embed_init, (1, self.max_len, self.dim),
                     self.param_dtype)
    tokens = tokens + pos[:, :ids.shape[1]].astype(self.dtype)
    return _transformer(self, tokens, mask, train, add_positions=False)


# ----------------------------------------------------------------------------- registry

ENCODERS: dict[str, dict[str, type[_EncoderBase]]] = {
    'image': {'lenet': ImageLeNet, 'cnn': ImageCNN, 'vit': ImageViT},
    'audio': {'lenet': AudioLeNet, 'ast': AudioAST},
    'text': {'transformer': TextTransformer},
}
# Every modality, in the order of a batch's `present` columns (crossmodal/data/manifest.py).
MODALITIES = tuple(ENCODERS)


def presence(batch: Any, modalities: Sequence[str]) -> Any:
  """bool [B, len(modalities)]: which of `modalities` each example has, from the batch's
  `present` (data whose rows may lack a modality); None when the batch has none (complete
  data). NumPy or JAX arrays alike."""
  if 'present' not in batch:
    return None
  return batch['present'][:, [MODALITIES.index(m) for m in modalities]].astype(bool)


def _where(modality: str) -> str:
  return f'config.model.encoders.{modality}'


def _encoder_class(modality: str, type_: str) -> type[_EncoderBase]:
  if modality not in ENCODERS:
    raise schema.ConfigError(f'unknown modality {modality!r}; valid choices: {sorted(ENCODERS)}')
  if type_ not in ENCODERS[modality]:
    raise schema.ConfigError(f'{_where(modality)}.type={type_!r}: unknown encoder; valid '
                             f'choices: {sorted(ENCODERS[modality])}')
  return ENCODERS[modality][type_]


def config_fields(cls: type[_EncoderBase]) -> dict[str, Any]:
  """The encoder's config fields and defaults: its dataclass fields minus the build fields."""
  return schema.defaults_of(cls, skip=_BUILD_FIELDS + ('parent', 'name'))


# Numeric fields and the smallest valid value (of every item, for tuples).
_MINIMUM = {'base_channels': 1, 'extra_layers': 0, 'blocks_per_stage': 1, 'widths': 1,
            'patch_size': 1, 'patch_stride': 1, 'depth': 0, 'num_heads': 1, 'mlp_ratio': 1,
            'vocab_size': 1, 'max_len': 1}


def check_config(modality: str, cfg: Mapping[str, Any] | ml_collections.ConfigDict
                 ) -> tuple[type[_EncoderBase], dict[str, Any]]:
  """(encoder class, its resolved fields) of `config.model.encoders.<modality>`: fields
  missing from `cfg` take their defaults; ConfigError naming every unknown field, wrong type,
  invalid choice or out-of-range value (and those of its `features`)."""
  values, where = schema.as_dict(cfg), _where(modality)
  if 'type' not in values:
    raise schema.ConfigError(f'{where} needs a `type`; valid choices: '
                             f'{sorted(ENCODERS.get(modality, {}))}')
  cls = _encoder_class(modality, values.pop('type'))
  defaults = config_fields(cls)
  rules = {field: (schema.ints_at_least(low) if isinstance(defaults[field], tuple)
                   else schema.int_at_least(low))
           for field, low in _MINIMUM.items() if field in defaults}
  rules.update({k: rule for k, rule in (('dropout', schema.FRACTION),
                                        ('spec_std', schema.POSITIVE)) if k in defaults})
  values = schema.check(where, values, defaults, choices=cls.CHOICES, rules=rules)
  if values.get('features') is not None:
    features_lib.FeatureParams.check(values['features'], f'{where}.features')
  return cls, values


def encoder_config(modality: str, type: str,  # pylint: disable=redefined-builtin
                   **overrides: Any) -> ml_collections.ConfigDict:
  """Locked ConfigDict with `type` plus exactly that encoder's fields at their defaults.

  Audio encoders get a nested `features` config (features_config()); override it with a dict
  of its fields, e.g. encoder_config('audio', 'ast', features={'n_mels': 32}).
  """
  values = config_fields(_encoder_class(modality, type))
  if 'features' in values:
    features = features_lib.features_config()
    features.update(dict(overrides.pop('features', None) or {}))
    overrides['features'] = features
  check_config(modality, {'type': type, **values, **overrides})
  cfg = ml_collections.ConfigDict({'type': type, **values, **overrides})
  cfg.lock()
  return cfg


def build_encoder(modality: str, cfg: Mapping[str, Any] | ml_collections.ConfigDict, dim: int,
                  *, dtype: Any = jnp.float32, axis_name: str | None = None,
                  with_tokens: bool = True, with_pooled: bool = True,
                  attention: str = 'einsum', remat: str = 'none',
                  name: str | None = None) -> _EncoderBase:
  """Instantiates the encoder `cfg.type` for `modality` with output width `dim` (its config
  checked by `check_config`)."""
  cls, values = check_config(modality, cfg)
  if values.get('features') is not None:
    features = features_lib.features_config()
    features.update(values['features'])
    values['features'] = ml_collections.FrozenConfigDict(features)  # hashable module field
  values = {k: tuple(v) if isinstance(v, list) else v for k, v in values.items()}
  return cls(dim=dim, dtype=dtype, axis_name=axis_name, with_tokens=with_tokens,
             with_pooled=with_pooled, attention=attention, remat=remat, name=name, **values)
