"""The full model: one encoder per modality, then a fusion that owns the classifier head(s).

`build_model(config.model, num_classes)` is the only way training code builds a model, so an
ablation (encoder type, fusion type, any of their switches) is a config override.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from absl import logging
import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from crossmodal import objectives as objectives_lib
from crossmodal import schema
from crossmodal.models import attention as attention_lib
from crossmodal.models import encoders as encoders_lib
from crossmodal.models import fusion as fusion_lib
from crossmodal.models import text_decoder as text_decoder_lib

# Compute dtypes (config.train.dtype); parameters and optimizer state stay float32.
DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}
DEFAULT_ENCODERS = {'image': 'lenet', 'audio': 'lenet', 'text': 'transformer'}
REQUIRED_KEYS = ('modalities', 'dim', 'encoders', 'fusion')


class Decoder(nn.Module):
  """Pooled vector -> an image in [0, 1] (the reconstruction objective): a ReLU MLP."""
  shape: tuple[int, ...]
  hidden: tuple[int, ...] = (512,)
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for i, width in enumerate(self.hidden):
      x = nn.relu(nn.Dense(width, dtype=self.dtype, name=f'hidden_{i}')(x))
    x = nn.Dense(int(np.prod(self.shape)), dtype=self.dtype, name='pixels')(x)
    return nn.sigmoid(x.astype(jnp.float32)).reshape((x.shape[0],) + self.shape)


class ConvDecoder(nn.Module):
  """Pooled vector -> an image in [0, 1] as DCGAN's generator: a dense layer to an
  (H/4)x(W/4) map of 2*width channels, then two stride-2 transposed convolutions (width, then
  the image's channels), BatchNorm and ReLU between."""
  shape: tuple[int, ...]
  width: int = 64
  dtype: Any = jnp.float32
  axis_name: str | None = None

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    h, w, c = self.shape
    if h % 4 or w % 4:
      raise ValueError(f'ConvDecoder: the target is {h}x{w}; the conv decoder needs sides '
                       "divisible by 4 (use config.objectives.reconstruction.decoder='mlp')")
    norm = lambda name: nn.BatchNorm(use_running_average=not train, axis_name=self.axis_name,
                                     dtype=self.dtype, name=name)
    x = nn.Dense((h // 4) * (w // 4) * 2 * self.width, dtype=self.dtype, name='project')(x)
    x = nn.relu(norm('norm_0')(x)).reshape(x.shape[0], h // 4, w // 4, 2 * self.width)
    x = nn.ConvTranspose(self.width, (4, 4), strides=(2, 2), dtype=self.dtype, name='up_0')(x)
    x = nn.relu(norm('norm_1')(x))
    x = nn.ConvTranspose(c, (4, 4), strides=(2, 2), dtype=self.dtype, name='up_1')(x)
    return nn.sigmoid(x.astype(jnp.float32))


class Discriminator(nn.Module):
  """(image in [0, 1] [B, H, W, C], condition [B, D]) -> logit [B]: strided convolutions with
  leaky ReLU, flattened into a `dense`-unit leaky-ReLU layer h, then a linear term plus the
  projection <W c, h> of the condition (Miyato and Koyama 2018). Every weight is spectrally
  normalised (SNGAN; the power-iteration vectors live in 'batch_stats'): without it the
  logits grew to hundreds within 250 steps. The dense layer reads the whole map (DCGAN's
  discriminator): with SNGAN's sum over positions straight into the logit after two
  convolutions on 28x28, the generators drew stroke fragments, not digits, even with the
  label as the condition (scripts/gan_check.py; docs/results.md, "audio -> image")."""
  channels: tuple[int, ...] = (64, 128)
  dense: int = 256
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, image: jax.Array, condition: jax.Array, train: bool = False
               ) -> jax.Array:
    normalised = lambda layer: lambda x: nn.SpectralNorm(layer)(x, update_stats=train)
    x = image.astype(self.dtype) * 2.0 - 1.0
    for i, width in enumerate(self.channels):
      x = normalised(nn.Conv(width, (4, 4), strides=2, dtype=self.dtype, name=f'conv_{i}'))(x)
      x = nn.leaky_relu(x, 0.2)
    h = x.reshape(x.shape[0], -1)
    h = nn.leaky_relu(normalised(nn.Dense(self.dense, dtype=self.dtype, name='dense'))(h), 0.2)
    logit = normalised(nn.Dense(1, dtype=self.dtype, name='linear'))(h)[:, 0]
    projection = normalised(nn.Dense(self.dense, dtype=self.dtype, name='condition'))(
        condition)
    return (logit + (projection * h).sum(-1)).astype(jnp.float32)


class CrossModalModel(nn.Module):
  """Encoders -> fusion (which owns the classifier head), plus the heads that objectives other
  than classification need. Parameters stay float32; `dtype` is the compute dtype; outputs are
  float32.

  Outputs: `logits`; `fused` (the fusion's fused vector; None for late); `embeddings`: each
  modality's pooled vector (under an attention fusion conv encoders compute none unless
  `pooled` asks for them: they stop at their token stage, so their modality is absent); `aux_logits` {modality: [B, C]} with `aux_heads`; `logit_scale`
  (the learned inverse temperature, clipped) with `logit_scale_init`; `logit_bias` (the
  sigmoid contrastive loss's learned bias) with `logit_bias_init`; `reconstruction`
  [B, *target shape] in [0, 1] with `decoder` = (source, target, hidden widths, 'mlp' or
  'conv'); with `adversarial` = (noise width, discriminator channels, its dense layer's
  width) the decoder also reads noise (drawn from the 'dropout' stream in training, a fixed
  draw per batch row otherwise) and `discriminator` holds the logits {real, fake, fake_for_generator} [B] (objectives.py);
  with `text_decoder` (config.objectives.generation) `generation_context` (the sources'
  tokens and masks the decoder reads, a missing modality's masked out) and, when the batch
  holds the target, `generation_logits` [B, L-1, V] (teacher forcing).

  encoders: {modality: encoder config} (encoders.encoder_config); fusion: a fusion config
  (fusion.fusion_config); head: hidden widths of the fusion's MLP head; dropout: the head's
  dropout. axis_name: the pmap axis BatchNorm averages statistics over.
  """
  modalities: tuple[str, ...]
  encoders: Any
  fusion: Any
  num_classes: int
  dim: int
  head: tuple[int, ...] = ()
  dropout: float = 0.0
  axis_name: str | None = None
  dtype: Any = jnp.float32
  pooled: bool = False  # every encoder computes its pooled vector (embedding objectives)
  aux_heads: bool = False
  logit_scale_init: float | None = None
  logit_bias_init: float | None = None  # the sigmoid contrastive loss's learned bias
  decoder: tuple[str, str, tuple[int, ...], str] | None = None
  text_decoder: Any = None  # config.objectives.generation (frozen)
  adversarial: tuple[int, tuple[int, ...], int] | None = None
  # Modalities whose encoder is locked (config.train.frozen): run in inference mode.
  frozen_encoders: tuple[str, ...] = ()
  # Every transformer stack's attention implementation and rematerialisation (attention.py).
  attention: str = 'einsum'
  remat: str = 'none'

  @nn.nowrap
  def encoder(self, modality: str) -> nn.Module:
    """The encoder of `modality`, built as __call__ builds it (tokens for attention fusions,
    pooled vectors for the others or when an objective reads them)."""
    fusion_tokens = fusion_lib.uses_tokens(self.fusion.type)
    decoded_from = self.text_decoder.sources if self.text_decoder is not None else ()
    return encoders_lib.build_encoder(
        modality, self.encoders[modality], self.dim, dtype=self.dtype, axis_name=self.axis_name,
        with_tokens=fusion_tokens or modality in decoded_from,
        with_pooled=self.pooled or not fusion_tokens,
        attention=self.attention, remat=self.remat, name=f'{modality}_encoder')

  @nn.nowrap
  def text_decoder_module(self, decode: bool = False) -> text_decoder_lib.TextDecoder:
    """The text decoder, built as __call__ builds it (`decode`: one position per call)."""
    g = self.text_decoder
    return text_decoder_lib.TextDecoder(
        dim=self.dim, max_len=int(g.max_len), num_layers=int(g.layers), num_heads=int(g.heads),
        mlp_ratio=int(g.mlp_ratio), dropout=float(g.dropout), combine=g.combine, decode=decode,
        attention=self.attention, remat=self.remat, dtype=self.dtype, name='text_decoder')

  @nn.nowrap
  def trunks(self) -> dict[str, dict[str, Any]]:
    """{modality: which conv stages its encoder runs} for the LeNet encoders (run_info.json)."""
    return {m: encoders_lib.lenet_trunk(e) for m in self.modalities
            if hasattr(e := self.encoder(m), 'trunk')}

  @nn.compact
  def __call__(self, batch: Mapping[str, jax.Array], present: jax.Array | None = None,
               train: bool = False, return_attention: bool = False) -> dict[str, Any]:
    missing = [m for m in self.modalities if m not in batch]
    if missing:
      raise ValueError(f'CrossModalModel: batch lacks modalities {missing} listed in '
                       f'config.model.modalities={list(self.modalities)}; batch keys: '
                       f'{sorted(batch)}')
    size = batch[self.modalities[0]].shape[0]
    shape = (size, len(self.modalities))
    if present is None:
      present = jnp.ones(shape, bool)
    elif present.shape != shape:
      raise ValueError(f'CrossModalModel: present must be bool [B, M] = {shape} (M follows '
                       f'modalities {list(self.modalities)}), got {present.shape}')
    present = present.astype(bool)
    # `present` [B, M]: what the fusion may see (modality dropout, the robustness evaluator);
    # a batch's own `present` [B, 3] (data whose rows may lack a modality, in
    # encoders.MODALITIES order) hides what the data lacks as well.
    has = encoders_lib.presence(batch, self.modalities)
    if has is not None:
      present = present & has

    encoded = {m: self.encoder(m)(batch[m], train=train and m not in self.frozen_encoders)
               for m in self.modalities}
    fusion = fusion_lib.build_fusion(self.fusion, modalities=self.modalities,
                                     num_classes=self.num_classes, head_hidden=self.head,
                                     dropout=self.dropout, dtype=self.dtype,
                                     attention=self.attention, remat=self.remat, name='fusion')
    fused = fusion(encoded, present, train=train, return_attention=return_attention)

    out = {
        'logits': fused['logits'].astype(jnp.float32),
        # Per-modality pooled vectors; conv encoders under attention fusions compute none.
        'embeddings': {m: e.pooled.astype(jnp.float32) for m, e in encoded.items()
                       if e.pooled is not None},
        # The fusion's fused vector [B, Df] (None for late fusion): what a linear probe reads.
        'fused': None if fused['fused'] is None else fused['fused'].astype(jnp.float32),
    }
    if 'stream_logits' in fused:  # per-stream heads: objectives.compute averages their losses
      out['stream_logits'] = fused['stream_logits'].astype(jnp.float32)
      out['stream_present'] = fused['stream_present']
    if return_attention:
      out['attention'] = fused.get('attention', {})
    if self.aux_heads:
      out['aux_logits'] = {
          m: nn.Dense(self.num_classes, dtype=self.dtype, name=f'{m}_aux_head')(
              encoded[m].pooled).astype(jnp.float32) for m in self.modalities}
    if self.logit_scale_init is not None:
      log_scale = self.param('logit_scale', nn.initializers.constant(
          np.log(self.logit_scale_init)), ())
      out['logit_scale'] = jnp.minimum(jnp.exp(log_scale), objectives_lib.MAX_LOGIT_SCALE)
    if self.logit_bias_init is not None:
      out['logit_bias'] = self.param('logit_bias', nn.initializers.constant(
          self.logit_bias_init), ())
    if self.text_decoder is not None:
      g = self.text_decoder
      contexts = [encoded[m].tokens for m in g.sources]
      masks = [encoded[m].mask & present[:, self.modalities.index(m), None] for m in g.sources]
      out['generation_context'] = (contexts, masks)
      targets = objectives_lib.generation_targets(g, batch)
      if targets is not None:
        out['generation_logits'] = self.text_decoder_module()(
            targets[:, :-1], contexts, masks, train=train)
    if self.decoder is not None:
      source, target, hidden, kind = self.decoder
      condition = encoded[source].pooled
      inputs = condition
      if self.adversarial is not None:
        noise_key = (self.make_rng('dropout') if train and self.has_rng('dropout')
                     else jax.random.key(0))
        noise = jax.random.normal(noise_key, (size, self.adversarial[0]), condition.dtype)
        inputs = jnp.concatenate([condition, noise], axis=-1)
      shape = tuple(batch[target].shape[1:])
      if kind == 'conv':
        out['reconstruction'] = ConvDecoder(shape, hidden[0], dtype=self.dtype,
                                            axis_name=self.axis_name,
                                            name=f'{target}_decoder')(inputs, train)
      else:
        out['reconstruction'] = Decoder(shape, hidden, dtype=self.dtype,
                                        name=f'{target}_decoder')(inputs)
      if self.adversarial is not None:
        out['discriminator'] = self._discriminate(batch[target], out['reconstruction'],
                                                  condition, f'{target}_discriminator', train)
    return out

  def _discriminate(self, real, fake, condition, name: str, train: bool
                    ) -> dict[str, jax.Array]:
    """The discriminator's logits; only its own loss reaches its parameters (the generated
    image's gradient is stopped), and only the generator's loss reaches the generator (it is
    scored by a copy of the discriminator with stopped parameters)."""
    real = objectives_lib.unit_pixels(real)
    condition = jax.lax.stop_gradient(condition)
    fake = fake.reshape(real.shape)
    make = lambda **kw: Discriminator(*self.adversarial[1:], dtype=self.dtype, **kw)
    disc = make(name=name)
    logits = {'real': disc(real, condition, train),
              'fake': disc(jax.lax.stop_gradient(fake), condition, train)}
    stopped = jax.lax.stop_gradient(dict(disc.variables))  # params and spectral-norm vectors
    logits['fake_for_generator'] = make(parent=None).apply(stopped, fake, condition)
    return logits


def _as_mapping(cfg: Any) -> Mapping[str, Any]:
  if isinstance(cfg, ml_collections.ConfigDict):
    return cfg
  return ml_collections.ConfigDict(dict(cfg))


def objective_heads(objectives: Mapping[str, Any] | None,
                    modalities: Sequence[str]) -> dict[str, Any]:
  """The model fields `config.objectives` asks for (pooled, aux_heads, logit_scale_init,
  logit_bias_init, decoder, adversarial, text_decoder); ConfigError if an objective is invalid for the model's
  modalities. A learned temperature starts at objectives.initial_temperature (InfoNCE 0.07,
  sigmoid 0.1: SigLIP's log-temperature log 10); the sigmoid loss adds a learned bias
  starting at `sigmoid_bias` (SigLIP: -10), the other losses none."""
  objectives_lib.check_config(objectives, modalities)
  active = objectives_lib.active(objectives)
  fields: dict[str, Any] = {}
  if 'aux_classification' in active:
    fields.update(pooled=True, aux_heads=True)
  if 'contrastive' in active:
    fields['pooled'] = True
    c = objectives.contrastive
    if objectives_lib.learns_temperature(c):
      fields['logit_scale_init'] = 1.0 / objectives_lib.initial_temperature(c)
      if c.loss == 'sigmoid':
        fields['logit_bias_init'] = float(c.sigmoid_bias)
  if 'reconstruction' in active:
    r = objectives.reconstruction
    fields.update(pooled=True, decoder=(r.source, r.target, tuple(r.hidden), r.decoder))
  if 'adversarial' in active:
    r, a = objectives.reconstruction, objectives.adversarial
    fields.update(pooled=True, decoder=(r.source, r.target, tuple(r.hidden), r.decoder),
                  adversarial=(int(a.noise_dim), tuple(a.channels), int(a.dense)))
  if 'generation' in active:
    fields['text_decoder'] = ml_collections.FrozenConfigDict(_as_mapping(objectives.generation))
  return fields


# config.model: its fields' defaults (encoders and fusion are checked by their modules).
_DEFAULTS = {'modalities': ('image', 'audio'), 'dim': 64, 'encoders': {}, 'fusion': {},
             'head': (), 'dropout': 0.0, 'attention': 'einsum', 'remat': 'none'}
_RULES = {'modalities': ((lambda v: len(v) > 0 and len(set(v)) == len(v)),
                         'must be a non-empty tuple of distinct modalities'),
          'dim': schema.POSITIVE_INT, 'head': schema.ints_at_least(1),
          'dropout': schema.FRACTION}
WHERE = 'config.model'


def check_config(model_config: ml_collections.ConfigDict | Mapping[str, Any],
                 objectives: Mapping[str, Any] | None = None) -> None:
  """ConfigError naming every bad option of `config.model` (its encoders and fusion too) and,
  when given, of `config.objectives` for its modalities. Builds nothing."""
  values = schema.as_dict(model_config)
  messages = schema.problems(WHERE, values, _DEFAULTS, required=REQUIRED_KEYS,
                             choices={'modalities': tuple(encoders_lib.ENCODERS),
                                      'attention': attention_lib.ATTENTIONS,
                                      'remat': tuple(attention_lib.REMAT_POLICIES)},
                             rules=_RULES)
  if messages:
    raise schema.ConfigError(problems=messages)
  modalities = tuple(values['modalities'])
  missing = [m for m in modalities if m not in values['encoders']]
  if missing:
    raise schema.ConfigError(
        f'{WHERE}.encoders lacks {missing[0]!r} (listed in modalities); add e.g. '
        f'encoder_config({missing[0]!r}, {DEFAULT_ENCODERS[missing[0]]!r})')
  schema.collect(*[lambda m=m: encoders_lib.check_config(m, values['encoders'][m])
                   for m in modalities],
                 lambda: fusion_lib.check_config(values['fusion'], len(modalities)),
                 lambda: objectives_lib.check_config(objectives, modalities))


def build_model(model_config: ml_collections.ConfigDict | Mapping[str, Any], num_classes: int,
                axis_name: str | None = None, dtype: Any = 'float32',
                objectives: Mapping[str, Any] | None = None) -> CrossModalModel:
  """Builds the model from `config.model` (modalities, dim, encoders.<m>, fusion, and
  optionally head, dropout), with the heads `config.objectives` needs (objective_heads).

  dtype: compute dtype name (DTYPES), usually config.train.dtype.
  axis_name: set when the model runs under pmap so BatchNorm syncs statistics over devices.
  """
  cfg = _as_mapping(model_config)
  check_config(cfg)  # before any module is built, naming every bad option
  modalities = tuple(cfg.modalities)
  if isinstance(dtype, str):
    if dtype not in DTYPES:
      raise ValueError(f'model dtype {dtype!r} is unknown; valid choices: {sorted(DTYPES)}')
    dtype = DTYPES[dtype]
  if cfg.get('attention', 'einsum') == 'dot_product':
    rates = {f'encoders.{m}': cfg.encoders[m].get('dropout', 0.0) for m in modalities}
    rates['fusion'] = cfg.fusion.get('dropout', 0.0)
    dropped = sorted(k for k, v in rates.items() if v)
    if dropped:
      logging.warning("config.model.attention='dot_product' drops no attention weights: the "
                      'dropout of %s applies to attention outputs and MLPs only',
                      ', '.join(f'{WHERE}.{k}' for k in dropped))
  encoders = ml_collections.FrozenConfigDict({m: _as_mapping(cfg.encoders[m])
                                              for m in modalities})
  fusion = ml_collections.FrozenConfigDict(_as_mapping(cfg.fusion))
  return CrossModalModel(modalities=modalities, encoders=encoders, fusion=fusion,
                         num_classes=int(num_classes), dim=int(cfg.dim),
                         head=tuple(cfg.get('head', ())), dropout=float(cfg.get('dropout', 0.0)),
                         axis_name=axis_name, dtype=dtype,
                         attention=cfg.get('attention', 'einsum'),
                         remat=cfg.get('remat', 'none'),
                         **objective_heads(objectives, modalities))


def default_model_config(modalities: Sequence[str] = ('image', 'audio'), fusion: str = 'concat',
                         dim: int = 64, encoders: Mapping[str, str] | None = None,
                         head: Sequence[int] = (100,), dropout: float = 0.0
                         ) -> ml_collections.ConfigDict:
  """config.model with default encoders (image/audio LeNet as MultiBench, text transformer).

  encoders: optional {modality: type} to pick other encoders, e.g. {'image': 'vit'}.
  head: hidden widths of the classifier MLP ((100,) as MultiBench's AV-MNIST head; () for a
  linear classifier); dropout: the head's dropout.
  """
  types = {**DEFAULT_ENCODERS, **dict(encoders or {})}
  unknown = sorted(set(types) - set(encoders_lib.ENCODERS))
  if unknown:
    raise ValueError(f'default_model_config: unknown modality {unknown}; valid choices: '
                     f'{sorted(encoders_lib.ENCODERS)}')
  return ml_collections.ConfigDict({
      'modalities': tuple(modalities),
      'dim': dim,
      'encoders': {m: encoders_lib.encoder_config(m, types[m]) for m in modalities},
      'fusion': fusion_lib.fusion_config(fusion),
      'head': tuple(head),
      'dropout': float(dropout),
      'attention': 'einsum',  # or 'dot_product' (models/attention.py)
      'remat': 'none',  # or 'full', 'dots', 'dots_no_batch': per transformer layer
  })


def count_params(variables: Mapping[str, Any]) -> int:
  """Number of trainable parameters: the `params` collection of `variables` (or a params tree).

  Works on arrays or on jax.eval_shape outputs (ShapeDtypeStruct), so counting needs no init.
  """
  tree = (variables['params'] if isinstance(variables, Mapping) and 'params' in variables
          else variables)
  return int(sum(np.prod(x.shape, dtype=np.int64) for x in jax.tree.leaves(tree)))


def param_counts_by_part(variables: Mapping[str, Any]) -> dict[str, int]:
  """Parameter count of each top-level part (`<modality>_encoder`, `fusion`)."""
  tree = variables['params'] if 'params' in variables else variables
  return {name: count_params(sub) for name, sub in tree.items()}
