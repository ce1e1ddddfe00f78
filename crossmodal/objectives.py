"""Training objectives and how they combine: `config.objectives` -> one weighted loss.

  classification      cross-entropy of the fusion's classifier (the default, weight 1)
  aux_classification  mean cross-entropy of one linear head per modality on its pooled vector
  contrastive         align two modalities' pooled vectors: symmetric InfoNCE (CLIP: cosine
                      similarity times a learned inverse temperature) or a triplet margin loss;
                      InfoNCE's positives are the paired examples, or every same-class pair
                      (`same_class_positives`: uniform soft targets over them); the triplet
                      hinge compares the paired example with each negative, and
                      `same_class_positives` only removes same-class keys from the negatives.
                      The hinge is averaged over all negatives, active or not, so its
                      gradient per negative shrinks as the batch grows.
  reconstruction      decode one modality's pooled vector into the other's input (the model's
                      decoder; mean squared error on pixels in [0, 1])

Negatives are the global batch. Under jit the batch is one global array, so XLA already
compares every example with every other across devices and hosts. Under pmap each device
gathers the other devices' vectors (`lax.all_gather`) and scores its own queries against all
of them; the gather's transpose sends each device's share of the gradient back, so the pmean'd
gradient equals the single-device one when every device holds the same number of real
examples, as in training (tests/test_objectives.py, on 8 devices).

Every objective returns (sum over this device's examples, their count), so training divides
and evaluation accumulates over a whole split; padded eval examples (`mask` False) count
neither as queries nor as negatives.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import optax

from crossmodal import schema

OBJECTIVES = ('classification', 'aux_classification', 'contrastive', 'reconstruction')
CONTRASTIVE_LOSSES = ('infonce', 'triplet')
DECODABLE = ('image',)  # modalities the reconstruction decoder can produce (an MLP to pixels)
MAX_LOGIT_SCALE = 100.0  # CLIP clips the learned inverse temperature here
_NEG = -1e9  # logit of a padded key
WHERE = 'config.objectives'


def objectives_config(**weights: float) -> ml_collections.ConfigDict:
  """config.objectives defaults (classification only).

  weights: e.g. objectives_config(classification=0.0, contrastive=1.0).
  """
  c = ml_collections.ConfigDict(dict(
      classification=dict(weight=1.0),  # the fusion's classifier
      aux_classification=dict(weight=0.0),  # a linear head per modality on its pooled vector
      contrastive=dict(
          weight=0.0, pair=('audio', 'image'),
          loss='infonce',  # or 'triplet' (margin loss on cosine similarity)
          temperature=0.07,  # initial value when learned (CLIP)
          learn_temperature=True,
          margin=0.2,  # triplet only
          same_class_positives=False),  # with labels: every same-class pair is a positive
      reconstruction=dict(weight=0.0, source='audio', target='image', hidden=(512,)),
  ))
  unknown = sorted(set(weights) - set(OBJECTIVES))
  if unknown:
    raise schema.ConfigError(f'objectives_config: unknown objective(s) {unknown}; valid: '
                             f'{OBJECTIVES}')
  for name, w in weights.items():
    c[name].weight = float(w)
  return c


_RULES = {'weight': schema.at_least(0), 'temperature': schema.POSITIVE,
          'margin': schema.at_least(0), 'hidden': schema.ints_at_least(1),
          'pair': ((lambda v: len(v) == 2 and len(set(v)) == 2),
                   'must be two different modalities')}


def _distinct_ends(where: str, v: Mapping[str, Any]) -> str | None:
  if 'source' in v and v['source'] == v['target']:
    return f'{where}: source and target are both {v["source"]!r}; they must differ'
  return None


def check_config(cfg: Mapping[str, Any] | None, modalities: Sequence[str]) -> None:
  """ConfigError naming every bad option of `config.objectives` (None: classification only)
  for a model of `modalities`: an active objective (weight > 0) may only name those."""
  if cfg is None:
    return
  from crossmodal.models import encoders  # pylint: disable=import-outside-toplevel
  values, defaults = schema.as_dict(cfg), objectives_config().to_dict()
  out = schema.problems(WHERE, values, defaults, required=True)
  for name, node in values.items():
    if name not in defaults or not isinstance(node, Mapping):
      continue  # reported above
    active = schema.number(node.get('weight')) and node['weight'] > 0
    allowed = tuple(modalities) if active else tuple(encoders.ENCODERS)
    targets = tuple(m for m in allowed if m in DECODABLE) if active else allowed
    out += schema.problems(f'{WHERE}.{name}', node, defaults[name], required=True,
                           choices={'loss': CONTRASTIVE_LOSSES, 'pair': allowed,
                                    'source': allowed, 'target': targets},
                           rules=_RULES, relations=(_distinct_ends,))
  weights_ = [node.get('weight') for node in values.values() if isinstance(node, Mapping)]
  if all(schema.number(w) for w in weights_) and not any(w > 0 for w in weights_):
    out.append(f'{WHERE}: every weight is 0, so nothing would be trained')
  if out:
    raise schema.ConfigError(problems=out)


def weights(cfg: Mapping[str, Any] | None) -> dict[str, float]:
  """{objective: weight} of `config.objectives` (None: classification only)."""
  if cfg is None:
    return {'classification': 1.0}
  return {name: float(cfg[name]['weight']) for name in OBJECTIVES if name in cfg}


def active(cfg: Mapping[str, Any] | None) -> tuple[str, ...]:
  return tuple(name for name, w in weights(cfg).items() if w > 0)


def learns_temperature(contrastive_cfg: Mapping[str, Any]) -> bool:
  """Whether the model carries a learned logit scale for the contrastive loss: only InfoNCE
  has a temperature (the triplet hinge compares raw cosine similarities)."""
  return bool(contrastive_cfg['learn_temperature']) and contrastive_cfg['loss'] == 'infonce'


def cross_entropy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  """Per-example softmax cross-entropy, in float32 whatever the compute dtype."""
  return optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32), labels)


def gather(x: jax.Array, axis_name: str | None) -> jax.Array:
  """The global batch of `x`: all devices' shards under pmap, `x` itself under jit."""
  return x if axis_name is None else jax.lax.all_gather(x, axis_name, axis=0, tiled=True)


def l2_normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
  x = x.astype(jnp.float32)
  return x / jnp.maximum(jnp.linalg.norm(x, axis=-1, keepdims=True), eps)


def _one_direction(queries, keys_all, own, positives, key_mask, *, loss: str, scale, margin):
  """Per-query loss [n] of `queries` [n, D] against every key [N, D] (both unit length).

  own: [n, N] bool, each query's paired key; positives: [n, N] float, the keys that count as
  matches (own, or every same-class key); key_mask: [N] bool, real keys.
  """
  sim = queries @ keys_all.T  # [n, N] cosine similarity
  if loss == 'infonce':
    logits = jnp.where(key_mask[None, :], sim * scale, _NEG)
    target = positives / positives.sum(-1, keepdims=True)  # uniform over the positives
    return -(target * jax.nn.log_softmax(logits, axis=-1)).sum(-1)
  # Triplet: hinge of every negative against the paired positive, averaged over negatives.
  positive_sim = jnp.where(own, sim, 0.0).sum(-1)
  negatives = (positives == 0) & key_mask[None, :]
  hinge = jax.nn.relu(margin - positive_sim[:, None] + sim) * negatives
  return hinge.sum(-1) / jnp.maximum(negatives.sum(-1), 1)


def contrastive(a: jax.Array, b: jax.Array, *, loss: str = 'infonce', scale: Any = 1.0,
                margin: float = 0.2, labels: jax.Array | None = None,
                same_class_positives: bool = False, mask: jax.Array | None = None,
                axis_name: str | None = None) -> tuple[jax.Array, jax.Array]:
  """Symmetric contrastive loss between paired rows of `a` and `b` [n, D] (this device's).

  scale: inverse temperature (InfoNCE logits = scale * cosine). Returns (sum of the per-query
  loss averaged over both directions a->b and b->a, number of real queries).
  """
  if loss not in CONTRASTIVE_LOSSES:
    raise ValueError(f'contrastive loss {loss!r}; valid choices: {CONTRASTIVE_LOSSES}')
  n = a.shape[0]
  mask = jnp.ones((n,), bool) if mask is None else mask.astype(bool)
  a, b = l2_normalize(a), l2_normalize(b)
  a_all, b_all, mask_all = gather(a, axis_name), gather(b, axis_name), gather(mask, axis_name)
  offset = 0 if axis_name is None else jax.lax.axis_index(axis_name) * n
  own = jnp.arange(a_all.shape[0])[None, :] == (offset + jnp.arange(n))[:, None]  # [n, N]
  positives = own
  if same_class_positives:
    if labels is None:
      raise ValueError('same_class_positives needs labels')
    positives = own | (labels[:, None] == gather(labels, axis_name)[None, :])
  positives = (positives & mask_all[None, :]).astype(jnp.float32)
  positives = jnp.where(mask[:, None], positives, own.astype(jnp.float32))  # no empty rows
  kw = dict(loss=loss, scale=scale, margin=margin)
  per_query = 0.5 * (_one_direction(a, b_all, own, positives, mask_all, **kw)
                     + _one_direction(b, a_all, own, positives, mask_all, **kw))
  w = mask.astype(jnp.float32)
  return (per_query * w).sum(), w.sum()


def _per_example(values: jax.Array, mask: jax.Array | None) -> tuple[jax.Array, jax.Array]:
  w = jnp.ones(values.shape[:1], jnp.float32) if mask is None else mask.astype(jnp.float32)
  return (values * w).sum(), w.sum()


def reconstruction_error(decoded: jax.Array, target: jax.Array) -> jax.Array:
  """Per-example mean squared error; `target` uint8 pixels are compared in [0, 1]."""
  target = target.astype(jnp.float32) / (255.0 if target.dtype == jnp.uint8 else 1.0)
  diff = decoded.astype(jnp.float32) - target.reshape(decoded.shape)
  return jnp.mean(diff.reshape(diff.shape[0], -1) ** 2, axis=-1)


def compute(cfg: Mapping[str, Any] | None, out: Mapping[str, Any],
            batch: Mapping[str, jax.Array], mask: jax.Array | None = None,
            axis_name: str | None = None) -> dict[str, tuple[jax.Array, jax.Array]]:
  """{objective: (sum, count)} for every objective with a positive weight (model outputs
  `out`: logits, aux_logits, embeddings, logit_scale, reconstruction)."""
  labels = batch['label']
  losses = {}
  for name in active(cfg):
    if name == 'classification':
      losses[name] = _per_example(cross_entropy(out['logits'], labels), mask)
    elif name == 'aux_classification':
      per_modality = [cross_entropy(l, labels) for l in out['aux_logits'].values()]
      losses[name] = _per_example(sum(per_modality) / len(per_modality), mask)
    elif name == 'contrastive':
      c = cfg.contrastive
      first, second = c.pair
      scale = out['logit_scale'] if learns_temperature(c) else 1.0 / c.temperature
      losses[name] = contrastive(
          out['embeddings'][first], out['embeddings'][second], loss=c.loss, scale=scale,
          margin=c.margin, labels=labels, same_class_positives=c.same_class_positives,
          mask=mask, axis_name=axis_name)
    elif name == 'reconstruction':
      target = batch[cfg.reconstruction.target]
      losses[name] = _per_example(reconstruction_error(out['reconstruction'], target), mask)
  return losses


def total(cfg: Mapping[str, Any] | None, means: Mapping[str, jax.Array]) -> jax.Array:
  """Weighted sum of per-objective mean losses."""
  w = weights(cfg)
  return sum(w[name] * value for name, value in means.items())
