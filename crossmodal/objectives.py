"""Training objectives and how they combine: `config.objectives` -> one weighted loss.

  classification      cross-entropy of the fusion's classifier (the default, weight 1); with
                      per-stream heads (fusion heads='per_stream') the mean of their losses
  aux_classification  mean cross-entropy of one linear head per modality on its pooled vector
  contrastive         align two modalities' pooled vectors: symmetric InfoNCE (CLIP: cosine
                      similarity times a learned inverse temperature), the sigmoid loss
                      (SigLIP: an independent binary term per pair, with a learned inverse
                      temperature and bias; see `sigmoid_contrastive`) or a triplet margin
                      loss; InfoNCE's positives are the paired examples, or every same-class
                      pair (`same_class_positives`: uniform soft targets over them; for the
                      sigmoid loss each same-class pair is a positive term); the triplet
                      hinge compares the paired example with each negative, and
                      `same_class_positives` only removes same-class keys from the negatives.
                      The hinge is averaged over all negatives, active or not, so its
                      gradient per negative shrinks as the batch grows.
  reconstruction      decode one modality's pooled vector into the other's input (the model's
                      decoder; mean squared error on pixels in [0, 1])
  adversarial         a conditional GAN on the reconstruction decoder (the generator: source
                      embedding plus noise -> target image) and a projection discriminator
                      with its own Adam (optim.with_discriminator); hinge or non-saturating
                      loss. Each side gets only its own loss's gradient: the discriminator
                      scores the generated image with its gradient stopped, and the generator
                      is scored by a copy of the discriminator whose parameters are stopped
  generation          write text from the tokens of one or more source modalities (the model's
                      text decoder, models/text_decoder.py): teacher-forced cross-entropy of
                      each target byte token, averaged over an example's tokens. The target is
                      the batch's `text`, or with `class_texts` the text of the example's class
                      (e.g. AV-MNIST's spoken digit as an English word)

Negatives are the global batch. Under jit the batch is one global array, so XLA already
compares every example with every other across devices and hosts. Under pmap each device
gathers the other devices' vectors (`lax.all_gather`) and scores its own queries against all
of them; the gather's transpose sends each device's share of the gradient back, so the pmean'd
gradient equals the single-device one when every device holds the same number of real
examples, as in training (tests/test_objectives.py, on 8 devices). The sigmoid loss gathers
nothing: the other devices' keys travel round a ring (`lax.ppermute`), one device's block at a
time, and at most SIGMOID_KEY_CHUNK keys are scored at once, so no device holds more than an
[n, min(n, chunk)] block of logits (n: its own queries; under jit XLA splits the query rows
over the devices: [n, min(B, chunk)]).

Every objective returns (sum over this device's examples, their count), so training divides
and evaluation accumulates over a whole split; padded eval examples (`mask` False) count
neither as queries nor as negatives. With a batch `present` mask (data whose rows lack a
modality), an example counts only for the objectives whose modalities it has: contrastive and
reconstruction need both ends, aux_classification averages over the modalities it has.
"""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import optax

from crossmodal import schema

OBJECTIVES = ('classification', 'aux_classification', 'contrastive', 'reconstruction',
              'adversarial', 'generation')
GAN_LOSSES = ('hinge', 'non_saturating')
CONTRASTIVE_LOSSES = ('infonce', 'sigmoid', 'triplet')
DECODABLE = ('image',)  # modalities the reconstruction decoder can produce (pixels)
DECODERS = ('mlp', 'conv')
MAX_LOGIT_SCALE = 100.0  # CLIP clips the learned inverse temperature here
_NEG = -1e9  # logit of a padded key
SIGMOID_KEY_CHUNK = 1024  # keys the sigmoid loss scores per step: a [queries, chunk] block
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
          loss='infonce',  # or 'sigmoid' (SigLIP), 'triplet' (margin loss on cosine similarity)
          temperature=0.07,  # infonce: initial value when learned, else fixed (CLIP)
          learn_temperature=True,  # sigmoid: the bias too
          # sigmoid only, initial values when learned, else fixed (SigLIP: logit scale
          # t = 1/0.1 = 10, i.e. log-temperature t' = log 10, and bias b = -10)
          sigmoid_temperature=0.1,
          sigmoid_bias=-10.0,
          margin=0.2,  # triplet only
          same_class_positives=False),  # with labels: every same-class pair is a positive
      reconstruction=dict(weight=0.0, source='audio', target='image', hidden=(512,),
                          # 'mlp': ReLU layers of `hidden` widths; 'conv': DCGAN's generator
                          # (transposed convolutions, BatchNorm), hidden[0] channels
                          decoder='mlp'),
      # the generator is reconstruction's decoder (its source, target, hidden) with noise
      # discriminator: conv `channels`, then a `dense`-unit layer (model.Discriminator)
      adversarial=dict(weight=0.0, loss='hinge', noise_dim=32, channels=(64, 128), dense=256,
                       lr=2e-4, b1=0.5, b2=0.999),  # the discriminator's Adam (DCGAN's)
      generation=dict(
          weight=0.0, sources=('image',),
          class_texts=(),  # () : the target is the batch's text; else one text per class
          max_len=40,  # target byte tokens with BOS/EOS (the decoder's positions)
          # the decoder (models/text_decoder.py): layers of causal self-attention and then
          # cross-attention to the sources' tokens, joined as attention.COMBINES says
          layers=2, heads=4, mlp_ratio=4, dropout=0.0, combine='concat_proj'),
  ))
  unknown = sorted(set(weights) - set(OBJECTIVES))
  if unknown:
    raise schema.ConfigError(f'objectives_config: unknown objective(s) {unknown}; valid: '
                             f'{OBJECTIVES}')
  for name, w in weights.items():
    c[name].weight = float(w)
  return c


_RULES = {'weight': schema.at_least(0), 'temperature': schema.POSITIVE,
          'sigmoid_temperature': schema.POSITIVE,
          'margin': schema.at_least(0), 'hidden': schema.ints_at_least(1),
          'pair': ((lambda v: len(v) == 2 and len(set(v)) == 2),
                   'must be two different modalities'),
          'sources': ((lambda v: len(v) > 0 and len(set(v)) == len(v)),
                      'must be one or more different modalities'),
          'max_len': schema.int_at_least(3), 'layers': schema.int_at_least(1),
          'heads': schema.int_at_least(1), 'mlp_ratio': schema.int_at_least(1),
          'dropout': schema.FRACTION, 'noise_dim': schema.int_at_least(0),
          'channels': schema.ints_at_least(1), 'dense': schema.int_at_least(1), 'lr': schema.POSITIVE,
          'b1': schema.FRACTION, 'b2': schema.FRACTION}


def _distinct_ends(where: str, v: Mapping[str, Any]) -> str | None:
  if 'source' in v and v['source'] == v['target']:
    return f'{where}: source and target are both {v["source"]!r}; they must differ'
  return None


def _text_target(where: str, v: Mapping[str, Any]) -> str | None:
  if 'sources' in v and 'text' in v['sources'] and not v['class_texts']:
    return (f'{where}: the target is the batch text, which sources={tuple(v["sources"])} '
            'would read; drop text from sources or set class_texts')
  return None


def _fits(where: str, v: Mapping[str, Any]) -> str | None:
  """Every class text fits max_len whole (text.encode would cut it silently)."""
  if 'class_texts' not in v:
    return None
  long = [t for t in v['class_texts'] if len(t.encode('utf-8')) + 2 > v['max_len']]
  if long:
    return (f'{where}.class_texts: {long[:3]} do not fit max_len={v["max_len"]} with BOS '
            'and EOS; raise max_len')
  return None


def check_config(cfg: Mapping[str, Any] | None, modalities: Sequence[str]) -> None:
  """ConfigError naming every bad option of `config.objectives` (None: classification only)
  for a model of `modalities`: an active objective (weight > 0) may only name those."""
  if cfg is None:
    return
  from crossmodal.models import attention  # pylint: disable=import-outside-toplevel
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
                                    'source': allowed, 'target': targets,
                                    'sources': allowed, 'combine': attention.COMBINES,
                                    'decoder': DECODERS,
                                    **({'loss': GAN_LOSSES} if name == 'adversarial' else {})},
                           rules=_RULES, relations=(_distinct_ends, _text_target, _fits))
  adversarial, reconstruction = values.get('adversarial') or {}, values.get('reconstruction') or {}
  if (schema.number(adversarial.get('weight')) and adversarial['weight'] > 0
      and isinstance(reconstruction, Mapping)):
    ends = [reconstruction.get('source'), reconstruction.get('target')]
    wrong = [m for m in ends if m not in modalities]
    if wrong or ends[1] not in DECODABLE:
      out.append(f'{WHERE}.adversarial: its generator is the reconstruction decoder, from '
                 f'{WHERE}.reconstruction.source={ends[0]!r} to target={ends[1]!r}; both must '
                 f'be modalities of the model {tuple(modalities)} and the target one of '
                 f'{DECODABLE}')
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
  """Whether the model carries a learned logit scale for the contrastive loss (and, for the
  sigmoid loss, a learned bias): InfoNCE and the sigmoid loss have a temperature, the triplet
  hinge compares raw cosine similarities."""
  return (bool(contrastive_cfg['learn_temperature'])
          and contrastive_cfg['loss'] in ('infonce', 'sigmoid'))


def initial_temperature(contrastive_cfg: Mapping[str, Any]) -> float:
  """The temperature the contrastive loss starts from (its fixed value when not learned):
  `sigmoid_temperature` for the sigmoid loss, `temperature` otherwise."""
  key = 'sigmoid_temperature' if contrastive_cfg['loss'] == 'sigmoid' else 'temperature'
  return float(contrastive_cfg[key])


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
                axis_name: str | None = None, bias: Any = 0.0,
                key_chunk: int = SIGMOID_KEY_CHUNK) -> tuple[jax.Array, jax.Array]:
  """Symmetric contrastive loss between paired rows of `a` and `b` [n, D] (this device's).

  scale: inverse temperature (InfoNCE logits = scale * cosine). Returns (sum of the per-query
  loss averaged over both directions a->b and b->a, number of real queries). The sigmoid loss
  (`bias`, `key_chunk`) is `sigmoid_contrastive`'s.
  """
  if loss not in CONTRASTIVE_LOSSES:
    raise ValueError(f'contrastive loss {loss!r}; valid choices: {CONTRASTIVE_LOSSES}')
  if loss == 'sigmoid':
    return sigmoid_contrastive(a, b, scale=scale, bias=bias, labels=labels,
                               same_class_positives=same_class_positives, mask=mask,
                               axis_name=axis_name, key_chunk=key_chunk)
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


def _sigmoid_rows(queries, query_index, query_labels, keys, key_index, key_labels, key_mask,
                  *, scale, bias, same_class: bool, chunk: int) -> jax.Array:
  """Per-query sum [n] over the real keys of -log sigmoid(z * (scale * cosine + bias)), z = +1
  for a positive (the key with the query's index, or with `same_class` its label), -1
  otherwise. At most `chunk` keys are scored at a time (a scan over key blocks, each block
  recomputed in the backward pass rather than stored), so the logits held are [n, chunk]."""

  def block(k, k_index, k_labels, k_mask):
    logits = (queries @ k.T) * scale + bias  # [n, c]
    positive = query_index[:, None] == k_index[None, :]
    if same_class:
      positive = positive | (query_labels[:, None] == k_labels[None, :])
    loglik = jax.nn.log_sigmoid(jnp.where(positive, logits, -logits))
    return -jnp.where(k_mask[None, :], loglik, 0.0).sum(-1)

  m = keys.shape[0]
  if m <= chunk:
    return block(keys, key_index, key_labels, key_mask)
  steps = -(-m // chunk)
  pad = steps * chunk - m  # padded keys: masked, with an index no query has

  def blocks(x, fill):
    x = jnp.concatenate([x, jnp.full((pad,) + x.shape[1:], fill, x.dtype)]) if pad else x
    return x.reshape((steps, chunk) + x.shape[1:])

  xs = (blocks(keys, 0), blocks(key_index, -1), blocks(key_labels, 0), blocks(key_mask, False))
  step = jax.checkpoint(block)
  total, _ = jax.lax.scan(lambda acc, x: (acc + step(*x), None),
                          jnp.zeros(queries.shape[:1], jnp.float32), xs)
  return total


def sigmoid_contrastive(a: jax.Array, b: jax.Array, *, scale: Any = 10.0, bias: Any = -10.0,
                        labels: jax.Array | None = None, same_class_positives: bool = False,
                        mask: jax.Array | None = None, axis_name: str | None = None,
                        key_chunk: int = SIGMOID_KEY_CHUNK) -> tuple[jax.Array, jax.Array]:
  """SigLIP's sigmoid loss (Zhai et al. 2023) between paired rows of `a` and `b` [n, D].

  With x_i, y_j the unit-length rows of a and b over the global batch B of real examples,
  t = `scale` (the learned logit scale, exp of the log-temperature) and b = `bias`:
      loss = -1/|B| sum_i sum_j log sigmoid(z_ij (t x_i.y_j + b)),
  z_ij = +1 for the paired example (and, with `same_class_positives`, every same-class pair),
  -1 otherwise. This is the paper's Algorithm 1 and big_vision's siglip.py (logits
  t x.y + b; the row sums of the [B, B] log-likelihood averaged over the B rows), i.e. a sum
  over all pairs divided by the batch size, not by |B|^2 nor by the number of positives.
  The sum over all pairs has no direction, so a's rows are scored against b's alone.

  Returns (this device's real queries' share of the sum, their count): padded examples
  (`mask` False) count neither as queries nor as keys. Under jit the batch is global; at most
  `key_chunk` keys are scored at once. Under pmap (`axis_name`) each device scores its own
  queries against its own keys, then against each other device's in turn as b's rows travel
  round the ring (`lax.ppermute`, size - 1 steps; its transpose returns each key's gradient
  to its device), so no device holds the global [B, D] keys or more than [n, min(n, chunk)]
  logits.
  """
  n = a.shape[0]
  mask = jnp.ones((n,), bool) if mask is None else mask.astype(bool)
  if same_class_positives and labels is None:
    raise ValueError('same_class_positives needs labels')
  labels = jnp.zeros((n,), jnp.int32) if labels is None else labels
  a, b = l2_normalize(a), l2_normalize(b)
  offset = 0 if axis_name is None else jax.lax.axis_index(axis_name) * n
  index = offset + jnp.arange(n)
  keys = (b, index, labels, mask)

  def rows(k, k_index, k_labels, k_mask):
    return _sigmoid_rows(a, index, labels, k, k_index, k_labels, k_mask, scale=scale,
                         bias=bias, same_class=same_class_positives, chunk=key_chunk)

  per_query = rows(*keys)
  if axis_name is not None and jax.lax.axis_size(axis_name) > 1:
    size = jax.lax.axis_size(axis_name)
    ring = [(i, (i + 1) % size) for i in range(size)]
    remat_rows = jax.checkpoint(rows)  # keep [n, D] keys per step, not [n, n] logits

    def visit(carry, _):
      acc, held = carry
      held = jax.lax.ppermute(held, axis_name, ring)  # the previous device's block
      return (acc + remat_rows(*held), held), None

    (per_query, _), _ = jax.lax.scan(visit, (per_query, keys), None, length=size - 1)
  w = mask.astype(jnp.float32)
  return (per_query * w).sum(), w.sum()


def _per_example(values: jax.Array, mask: jax.Array | None) -> tuple[jax.Array, jax.Array]:
  w = jnp.ones(values.shape[:1], jnp.float32) if mask is None else mask.astype(jnp.float32)
  return (values * w).sum(), w.sum()


def adversarial_losses(real: jax.Array, fake: jax.Array, fake_for_generator: jax.Array,
                       loss: str) -> tuple[jax.Array, jax.Array]:
  """Per-example (discriminator loss, generator loss) from discriminator logits [B] of the
  real images, of the generated ones (gradient stopped at the image) and of the generated
  ones under the stopped discriminator. hinge (SNGAN, BigGAN): relu(1 - D(x)) + relu(1 +
  D(G(z))) and -D(G(z)); non_saturating (Goodfellow et al.): softplus(-D(x)) +
  softplus(D(G(z))) and softplus(-D(G(z)))."""
  if loss == 'hinge':
    return jax.nn.relu(1.0 - real) + jax.nn.relu(1.0 + fake), -fake_for_generator
  if loss == 'non_saturating':
    return (jax.nn.softplus(-real) + jax.nn.softplus(fake),
            jax.nn.softplus(-fake_for_generator))
  raise ValueError(f'adversarial loss {loss!r}; valid choices: {GAN_LOSSES}')


def generation_targets(generation_cfg: Mapping[str, Any], batch: Mapping[str, jax.Array]
                       ) -> jax.Array | None:
  """Target ids [B, L] (BOS ... EOS, PAD): the class texts indexed by `label`, or the
  batch's `text`; None when the batch has no text to read."""
  texts = tuple(generation_cfg['class_texts'])
  if texts:
    from crossmodal.models import text  # pylint: disable=import-outside-toplevel
    table = jnp.asarray(text.encode(list(texts), int(generation_cfg['max_len'])))
    return table[batch['label']]
  return batch.get('text')


def token_cross_entropy(logits: jax.Array, targets: jax.Array) -> jax.Array:
  """Per-example mean cross-entropy of `logits` [B, L, V] for `targets` [B, L] over the
  targets that are not padding."""
  from crossmodal.models import text  # pylint: disable=import-outside-toplevel
  real = (targets != text.PAD_ID).astype(jnp.float32)
  per_token = optax.softmax_cross_entropy_with_integer_labels(logits.astype(jnp.float32),
                                                              targets)
  return (per_token * real).sum(-1) / jnp.maximum(real.sum(-1), 1.0)


def unit_pixels(images: jax.Array) -> jax.Array:
  """Images as float32 in [0, 1] (uint8 pixels divided by 255), as decoders draw them."""
  return images.astype(jnp.float32) / (255.0 if images.dtype == jnp.uint8 else 1.0)


def reconstruction_error(decoded: jax.Array, target: jax.Array) -> jax.Array:
  """Per-example mean squared error; `target` uint8 pixels are compared in [0, 1]."""
  target = unit_pixels(target)
  diff = decoded.astype(jnp.float32) - target.reshape(decoded.shape)
  return jnp.mean(diff.reshape(diff.shape[0], -1) ** 2, axis=-1)


def compute(cfg: Mapping[str, Any] | None, out: Mapping[str, Any],
            batch: Mapping[str, jax.Array], mask: jax.Array | None = None,
            axis_name: str | None = None) -> dict[str, tuple[jax.Array, jax.Array]]:
  """{objective: (sum, count)} for every objective with a positive weight (model outputs
  `out`: logits, aux_logits, embeddings, logit_scale, logit_bias, reconstruction)."""
  labels = batch['label']
  losses = {}

  def has(modality):  # bool [B]: the example has it (a batch's `present`, else always)
    from crossmodal.models import encoders  # pylint: disable=import-outside-toplevel
    rows = encoders.presence(batch, (modality,))
    return jnp.ones(labels.shape, bool) if rows is None else rows[:, 0]

  def both(rows):  # rows [B] bool, and the eval padding mask
    return rows if mask is None else rows & mask.astype(bool)

  for name in active(cfg):
    if name == 'classification' and 'stream_logits' in out:  # fusion heads='per_stream'
      w = out['stream_present'].astype(jnp.float32)  # [B, S]
      per_stream = jnp.stack([cross_entropy(l, labels) for l in out['stream_logits']], 1)
      losses[name] = _per_example((per_stream * w).sum(1) / jnp.maximum(w.sum(1), 1.0), mask)
    elif name == 'classification':
      losses[name] = _per_example(cross_entropy(out['logits'], labels), mask)
    elif name == 'aux_classification' and 'present' in batch:
      per_modality = jnp.stack([cross_entropy(l, labels) for l in out['aux_logits'].values()], 1)
      w = jnp.stack([has(m) for m in out['aux_logits']], 1).astype(jnp.float32)  # [B, M]
      losses[name] = _per_example((per_modality * w).sum(1) / jnp.maximum(w.sum(1), 1.0),
                                  both(w.sum(1) > 0))
    elif name == 'aux_classification':
      per_modality = [cross_entropy(l, labels) for l in out['aux_logits'].values()]
      losses[name] = _per_example(sum(per_modality) / len(per_modality), mask)
    elif name == 'contrastive':
      c = cfg.contrastive
      first, second = c.pair
      learned = learns_temperature(c)
      scale = out['logit_scale'] if learned else 1.0 / initial_temperature(c)
      bias = (out['logit_bias'] if learned else c.sigmoid_bias) if c.loss == 'sigmoid' else 0.0
      losses[name] = contrastive(
          out['embeddings'][first], out['embeddings'][second], loss=c.loss, scale=scale,
          margin=c.margin, labels=labels, same_class_positives=c.same_class_positives,
          mask=both(has(first) & has(second)), axis_name=axis_name, bias=bias)
    elif name == 'reconstruction':
      r = cfg.reconstruction
      losses[name] = _per_example(reconstruction_error(out['reconstruction'], batch[r.target]),
                                  both(has(r.source) & has(r.target)))
    elif name == 'adversarial':
      r, d = cfg.reconstruction, out['discriminator']
      d_loss, g_loss = adversarial_losses(d['real'], d['fake'], d['fake_for_generator'],
                                          cfg.adversarial.loss)
      losses[name] = _per_example(d_loss + g_loss, both(has(r.source) & has(r.target)))
    elif name == 'generation':
      g = cfg.generation
      targets = generation_targets(g, batch)
      if targets is None or 'generation_logits' not in out:
        raise ValueError('the generation objective needs a target: the batch has no text; '
                         'set config.objectives.generation.class_texts or use data with text')
      rows = jnp.stack([has(m) for m in g.sources], 1).any(1)  # some source to read
      if not g.class_texts:
        rows = rows & has('text')
      losses[name] = _per_example(token_cross_entropy(out['generation_logits'], targets[:, 1:]),
                                  both(rows))
  return losses


def total(cfg: Mapping[str, Any] | None, means: Mapping[str, jax.Array]) -> jax.Array:
  """Weighted sum of per-objective mean losses."""
  w = weights(cfg)
  return sum(w[name] * value for name, value in means.items())
