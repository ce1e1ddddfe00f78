"""Linear probe: a linear classifier fitted on frozen embeddings of one split (`train_split`) and
tested on another (`split`), i.e. how linearly decodable the label is from one modality's
pooled vector (`source=<modality>`) or from the fusion's fused vector (`source='fused'`).

The trained model embeds both splits (nothing in it changes), each feature is standardised
with the train statistics (a constant feature, e.g. a dead ReLU unit, is dropped), and the
classifier is fitted in JAX, deterministically, with an unregularised bias:
  ridge     closed form on one-hot targets, (X^T X + l2 I) W = X^T Y: scikit-learn's
            Ridge(alpha=l2) on the standardised features; the class with the highest score wins
  logistic  multinomial cross-entropy summed over the examples + l2/2 ||W||^2: scikit-learn's
            LogisticRegression(C=1/l2); from zeros, at most `steps` full-batch L-BFGS
            iterations (optax.lbfgs with its zoom line search), fewer once the gradient of the
            mean loss is below 1e-5
Cheap enough to run at every evaluation: one forward pass over each split (at most
`max_train_examples` / `max_examples`, the first ones in the split's order) and a fit on
[N, D] features, compiled once per run.
"""
from __future__ import annotations

import functools
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax

from crossmodal.evaluators import common

FUSED = 'fused'
METHODS = ('ridge', 'logistic')
_HIGHEST = jax.lax.Precision.HIGHEST  # float32 matmuls on TPU too (the default is bfloat16)
_TOLERANCE = 1e-5  # L-BFGS stops once the gradient norm of the mean loss is below this


class Evaluator(common.Evaluator):
  """Options: split (tested on), train_split (fitted on), source (a modality or 'fused'),
  method ('ridge' | 'logistic'), l2, steps (logistic's L-BFGS iterations), max_train_examples
  and max_examples (0 = the whole split)."""
  HEADLINES = (r'^accuracy$',)

  def __init__(self, model, objectives=None, data=None, *, split: str = 'test',
               train_split: str = 'train', source: str = 'image', method: str = 'ridge',
               l2: float = 1.0, steps: int = 100, max_train_examples: int = 0,
               max_examples: int = 0):
    super().__init__(model, objectives, data, split=split)
    self.train_split, self.source, self.method = train_split, source, method
    self.l2, self.steps = float(l2), steps
    self.max_train_examples, self.max_examples = max_train_examples, max_examples
    if train_split not in common.SPLITS:
      self.fail(f'{train_split!r}; valid choices: {list(common.SPLITS)}', 'train_split')
    if train_split == split:
      self.fail(f'{train_split!r} is also the split the probe is tested on (split), so its '
                'accuracy would measure memorisation; train_accuracy reports that already',
                'train_split')
    if method not in METHODS:
      self.fail(f'{method!r}; valid choices: {list(METHODS)}', 'method')
    if self.l2 < 0 or (method == 'ridge' and self.l2 == 0):
      self.fail(f'{l2} must be > 0 for ridge (a constant feature makes the normal equations '
                'singular) and >= 0 for logistic', 'l2')
    if steps < 1:
      self.fail(f'{steps} must be >= 1', 'steps')
    for name, value in (('max_train_examples', max_train_examples),
                        ('max_examples', max_examples)):
      if value < 0:
        self.fail(f'{value} must be >= 0 (0 = the whole split)', name)
    if source == FUSED:
      if model.fusion.type == 'late':
        self.fail("fusion='late' averages per-modality classifiers and has no fused vector; "
                  f'probe a modality instead, one of {list(self.modalities)}', 'source')
    elif source in self.modalities:
      common.embedding_fusion_check(self, (source,))
    else:
      self.fail(f'{source!r}: valid choices are a modality of the model '
                f'{list(self.modalities)} or {FUSED!r}', 'source')

  def metrics(self) -> dict[str, str]:
    return {'accuracy': common.MAX, 'train_accuracy': common.MAX}

  def run(self, predict, batches, workdir: str) -> dict[str, Any]:
    select = _select(self.source)
    train = predict.over(select, batches(self.train_split),
                         max_examples=self.max_train_examples)
    test = predict.over(select, batches(), max_examples=self.max_examples)
    if 'label' not in train:  # predict.over of a pass with no batches
      raise ValueError(f'linear_probe: split {self.train_split!r} has no examples to fit on')
    probe = fit(train['features'], train['label'], self.model.num_classes, self.method,
                self.l2, self.steps)
    test_labels = test.get('label', np.zeros((0,), np.int64))
    return {'accuracy': (accuracy(probe, test['features'], test_labels) if len(test_labels)
                         else float('nan')),
            'train_accuracy': accuracy(probe, train['features'], train['label']),
            'num_train': int(len(train['label'])), 'num_examples': int(len(test_labels))}


@functools.lru_cache(maxsize=None)
def _select(source: str):
  """The probed vector of `source`; one function per source, so the forward pass compiled for
  it is reused by every later evaluation of the run."""
  def select(out):
    if source == FUSED:
      if out.get(FUSED) is None:
        raise ValueError(f'linear_probe: the model returns no fused vector (its outputs: '
                         f'{sorted(out)}); crossmodal/models/model.py must pass on the '
                         "fusion's 'fused'")
      return {'features': out[FUSED]}
    if source not in out['embeddings']:
      raise ValueError(f'linear_probe: the model computes no pooled vector for {source!r}')
    return {'features': out['embeddings'][source]}
  return select


# ----------------------------------------------------------------------------- the fit


class Probe(NamedTuple):
  """A fitted probe: logits = ((x - mean) * inverse_scale) @ weights + bias."""
  mean: jax.Array  # [D] train mean
  inverse_scale: jax.Array  # [D] 1 / train standard deviation; 0 drops a constant feature
  weights: jax.Array  # [D, C]
  bias: jax.Array  # [C]


def fit(features: np.ndarray, labels: np.ndarray, num_classes: int, method: str = 'ridge',
        l2: float = 1.0, steps: int = 100) -> Probe:
  """The probe fitted on train features [N, D] and integer labels [N] (module docstring)."""
  return _fit(jnp.asarray(features, jnp.float32), jnp.asarray(labels, jnp.int32),
              jnp.float32(l2), num_classes=int(num_classes), method=method, steps=int(steps))


@functools.partial(jax.jit, static_argnames=('num_classes', 'method', 'steps'))
def _fit(x, labels, l2, *, num_classes: int, method: str, steps: int) -> Probe:
  mean, inverse_scale = standardization(x)
  z = (x - mean) * inverse_scale
  if method == 'ridge':
    weights, bias = ridge(z, jax.nn.one_hot(labels, num_classes, dtype=jnp.float32), l2)
  elif method == 'logistic':
    weights, bias = logistic(z, labels, num_classes, l2, steps)
  else:
    raise ValueError(f'linear_probe: method {method!r}; valid choices: {list(METHODS)}')
  return Probe(mean, inverse_scale, weights, bias)


def standardization(x: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(mean, 1 / std) of each column of x [N, D] (population std, as scikit-learn's
  StandardScaler); 0 instead of 1 / std for a column that is constant up to rounding."""
  mean = x.mean(0)
  std = jnp.sqrt(jnp.mean(jnp.square(x - mean), 0))
  constant = std <= 1e-6 * jnp.maximum(jnp.abs(mean), 1e-30)
  return mean, jnp.where(constant, 0.0, 1.0 / jnp.where(constant, 1.0, std))


def ridge(x: jax.Array, y: jax.Array, l2: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(W [D, C], b [C]) minimising ||x W + b - y||^2 + l2 ||W||^2: the normal equations of x
  with a column of ones appended, whose coefficient (the bias) is not penalised."""
  n, d = x.shape
  a = jnp.concatenate([x, jnp.ones((n, 1), x.dtype)], axis=1)
  penalty = jnp.concatenate([jnp.full((d,), l2, x.dtype), jnp.zeros((1,), x.dtype)])
  gram = jnp.dot(a.T, a, precision=_HIGHEST) + jnp.diag(penalty)
  w = jnp.linalg.solve(gram, jnp.dot(a.T, y, precision=_HIGHEST))
  return w[:d], w[d]


def logistic(x: jax.Array, labels: jax.Array, num_classes: int, l2: jax.Array, steps: int
             ) -> tuple[jax.Array, jax.Array]:
  """(W [D, C], b [C]) minimising sum_i cross-entropy(x_i W + b, label_i) + l2/2 ||W||^2 by
  full-batch L-BFGS from zeros (the mean over examples is minimised: same solution, better
  scaled), at most `steps` iterations."""
  n, d = x.shape

  def loss(params):
    weights, bias = params
    logits = jnp.dot(x, weights, precision=_HIGHEST) + bias
    ce = optax.softmax_cross_entropy_with_integer_labels(logits, labels).mean()
    return ce + 0.5 * l2 / n * jnp.sum(jnp.square(weights))

  solver = optax.lbfgs()
  value_and_grad = optax.value_and_grad_from_state(loss)

  def step(carry):
    params, state = carry
    value, grad = value_and_grad(params, state=state)
    updates, state = solver.update(grad, state, params, value=value, grad=grad, value_fn=loss)
    return optax.apply_updates(params, updates), state

  def going(carry):
    _, state = carry
    count = optax.tree_utils.tree_get(state, 'count')
    grad = optax.tree_utils.tree_get(state, 'grad')
    return (count == 0) | ((count < steps) & (optax.tree_utils.tree_norm(grad) >= _TOLERANCE))

  params = (jnp.zeros((d, num_classes), x.dtype), jnp.zeros((num_classes,), x.dtype))
  params, _ = jax.lax.while_loop(going, step, (params, solver.init(params)))
  return params


@jax.jit
def logits(probe: Probe, features: jax.Array) -> jax.Array:
  z = (features - probe.mean) * probe.inverse_scale
  return jnp.dot(z, probe.weights, precision=_HIGHEST) + probe.bias


def accuracy(probe: Probe, features: np.ndarray, labels: np.ndarray) -> float:
  """Fraction of `labels` [N > 0] that the probe's top class matches."""
  predicted = np.asarray(jnp.argmax(logits(probe, jnp.asarray(features, jnp.float32)), -1))
  return float(np.mean(predicted == np.asarray(labels)))
