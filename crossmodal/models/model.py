"""The full model: one encoder per modality, then a fusion that owns the classifier head(s).

`build_model(config.model, num_classes)` is the only way training code builds a model, so an
ablation (encoder type, fusion type, any of their switches) is a config override.
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from crossmodal.models import encoders as encoders_lib
from crossmodal.models import fusion as fusion_lib

DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16, 'float16': jnp.float16}
DEFAULT_ENCODERS = {'image': 'lenet', 'audio': 'lenet', 'text': 'transformer'}
REQUIRED_KEYS = ('modalities', 'dim', 'encoders', 'fusion')
OPTIONAL_KEYS = ('head', 'dropout')


class CrossModalModel(nn.Module):
  """Encoders -> fusion (which owns the classifier head). Parameters stay float32; `dtype`
  is the compute dtype; logits and embeddings are returned in float32. `embeddings` holds each
  modality's pooled vector; under an attention fusion conv encoders compute none (they stop at
  their token stage), so their modality is absent there.

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

    encoded = {}
    with_tokens = fusion_lib.uses_tokens(self.fusion.type)
    for m in self.modalities:
      encoder = encoders_lib.build_encoder(m, self.encoders[m], self.dim, dtype=self.dtype,
                                           axis_name=self.axis_name, with_tokens=with_tokens,
                                           with_pooled=not with_tokens, name=f'{m}_encoder')
      encoded[m] = encoder(batch[m], train=train)
    fusion = fusion_lib.build_fusion(self.fusion, modalities=self.modalities,
                                     num_classes=self.num_classes, head_hidden=self.head,
                                     dropout=self.dropout, dtype=self.dtype, name='fusion')
    fused = fusion(encoded, present, train=train, return_attention=return_attention)

    out = {
        'logits': fused['logits'].astype(jnp.float32),
        # Per-modality pooled vectors; conv encoders under attention fusions compute none.
        'embeddings': {m: e.pooled.astype(jnp.float32) for m, e in encoded.items()
                       if e.pooled is not None},
    }
    if return_attention:
      out['attention'] = fused.get('attention', {})
    return out


def _as_mapping(cfg: Any) -> Mapping[str, Any]:
  if isinstance(cfg, ml_collections.ConfigDict):
    return cfg
  return ml_collections.ConfigDict(dict(cfg))


def build_model(model_config: ml_collections.ConfigDict | Mapping[str, Any], num_classes: int,
                axis_name: str | None = None, dtype: Any = 'float32') -> CrossModalModel:
  """Builds the model from `config.model` (modalities, dim, encoders.<m>, fusion, and
  optionally head, dropout).

  dtype: compute dtype name ('float32', 'bfloat16', 'float16'), usually config.train.dtype.
  axis_name: set when the model runs under pmap so BatchNorm syncs statistics over devices.
  """
  cfg = _as_mapping(model_config)
  for key in REQUIRED_KEYS:
    if key not in cfg:
      raise ValueError(f'config.model lacks {key!r}; it needs {list(REQUIRED_KEYS)} and may '
                       f'have {list(OPTIONAL_KEYS)} (see default_model_config)')
  unknown = sorted(set(cfg) - set(REQUIRED_KEYS) - set(OPTIONAL_KEYS))
  if unknown:
    raise ValueError(f'config.model: unknown key(s) {unknown}; valid keys: '
                     f'{list(REQUIRED_KEYS + OPTIONAL_KEYS)}')
  modalities = tuple(cfg.modalities)
  if not modalities or len(set(modalities)) != len(modalities):
    raise ValueError(f'config.model.modalities must be distinct and non-empty, got '
                     f'{list(modalities)}; valid modalities: {sorted(encoders_lib.ENCODERS)}')
  for m in modalities:
    if m not in encoders_lib.ENCODERS:
      raise ValueError(f'config.model.modalities: unknown modality {m!r}; valid choices: '
                       f'{sorted(encoders_lib.ENCODERS)}')
    if m not in cfg.encoders:
      raise ValueError(f'config.model.encoders lacks {m!r} (listed in modalities); add e.g. '
                       f"encoder_config({m!r}, {DEFAULT_ENCODERS[m]!r})")
  if isinstance(dtype, str):
    if dtype not in DTYPES:
      raise ValueError(f'model dtype {dtype!r} is unknown; valid choices: {sorted(DTYPES)}')
    dtype = DTYPES[dtype]
  # Validate encoder configs now (unknown types/fields) rather than at the first init.
  for m in modalities:
    encoders_lib.build_encoder(m, cfg.encoders[m], int(cfg.dim))
  encoders = ml_collections.FrozenConfigDict({m: _as_mapping(cfg.encoders[m])
                                              for m in modalities})
  fusion = ml_collections.FrozenConfigDict(_as_mapping(cfg.fusion))
  # Validate the fusion config against the modalities now, too.
  fusion_lib.build_fusion(fusion, modalities=modalities, num_classes=int(num_classes),
                          head_hidden=tuple(cfg.get('head', ())),
                          dropout=float(cfg.get('dropout', 0.0)))
  return CrossModalModel(modalities=modalities, encoders=encoders, fusion=fusion,
                         num_classes=int(num_classes), dim=int(cfg.dim),
                         head=tuple(cfg.get('head', ())), dropout=float(cfg.get('dropout', 0.0)),
                         axis_name=axis_name, dtype=dtype)


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
  })


def count_params(variables: Mapping[str, Any]) -> int:
  """Number of trainable parameters: the `params` collection of `variables` (or a params tree).

  Works on arrays or on jax.eval_shape outputs (ShapeDtypeStruct), so counting needs no init.
  """
  tree = variables['params'] if 'params' in variables else variables
  return int(sum(np.prod(x.shape, dtype=np.int64) for x in jax.tree.leaves(tree)))


def param_counts_by_part(variables: Mapping[str, Any]) -> dict[str, int]:
  """Parameter count of each top-level part (`<modality>_encoder`, `fusion`)."""
  tree = variables['params'] if 'params' in variables else variables
  return {name: count_params(sub) for name, sub in tree.items()}
