"""Optax optimizer and learning-rate schedule built from `config.optim`.

One function per concern so the loop, the tests and the benchmarks build exactly the same
optimizer: `make_schedule` (warmup + cosine or constant), `make_optimizer` (adamw, sgd with
momentum, rmsprop; decoupled weight decay on matrices only; global-norm clipping; gradient
accumulation with `optax.MultiSteps`).

Step counting: `config.train.num_steps` counts micro-batches (one loop iteration = one input
batch). With `accum_steps = k` the parameters change every k micro-batches, so the schedule
runs over `num_steps // k` optimizer updates.
"""
from __future__ import annotations

from typing import Any

import jax
import ml_collections
import optax

from crossmodal import schema

OPTIMIZERS = ('adamw', 'sgd', 'rmsprop')
SCHEDULES = ('cosine', 'constant')
# Which optimizer fields each optimizer reads; a field another optimizer reads must keep its
# default, so that e.g. `optim.b2` set on an SGD run is an error instead of silently ignored.
OPTIMIZER_FIELDS = {'adamw': ('b1', 'b2', 'eps'), 'sgd': ('momentum',),
                    'rmsprop': ('momentum', 'eps', 'rms_decay')}
WHERE = 'config.optim'


def optim_config(**overrides: Any) -> ml_collections.ConfigDict:
  """config.optim defaults (AdamW, warmup + cosine)."""
  c = ml_collections.ConfigDict(dict(
      name='adamw', lr=1e-3, schedule='cosine', warmup_steps=0, end_lr_ratio=0.0,
      weight_decay=1e-4, grad_clip=0.0, accum_steps=1,
      momentum=0.9,  # sgd / rmsprop (0 = none)
      b1=0.9, b2=0.999, eps=1e-8,  # adamw (eps also rmsprop)
      rms_decay=0.9))
  c.update(overrides)
  return c


_RULES = {'lr': schema.POSITIVE, 'warmup_steps': schema.int_at_least(0),
          'end_lr_ratio': schema.PROBABILITY, 'weight_decay': schema.at_least(0),
          'grad_clip': (schema.at_least(0)[0], 'must be >= 0 (0 disables clipping)'),
          'accum_steps': schema.int_at_least(1), 'eps': schema.POSITIVE,
          **{key: schema.FRACTION for key in ('momentum', 'b1', 'b2', 'rms_decay')}}


def _fields_apply(where: str, v: Any) -> list[str]:
  """A field only other optimizers (or only the cosine schedule) read must keep its default."""
  defaults, out = optim_config(), []
  for key in sorted({k for ks in OPTIMIZER_FIELDS.values() for k in ks}):
    if key not in OPTIMIZER_FIELDS[v['name']] and v[key] != defaults[key]:
      users = [n for n, ks in OPTIMIZER_FIELDS.items() if key in ks]
      out.append(f'{where}.{key}={v[key]!r} has no effect with {where}.name={v["name"]!r} '
                 f'(used by {users}); leave it at {defaults[key]!r} or choose one of those '
                 'optimizers')
  if v['schedule'] == 'constant' and v['end_lr_ratio'] != defaults.end_lr_ratio:
    out.append(f"{where}.end_lr_ratio applies to schedule='cosine' only")
  return out


def check_config(optim_config_: Any, num_steps: Any = None) -> None:
  """ConfigError naming every bad option of `config.optim`; with `num_steps`
  (config.train.num_steps), also that every update sees a full set of micro-batches."""
  def whole_updates(where, v):
    if schema.integer(num_steps) and num_steps % v['accum_steps']:
      return (f'config.train.num_steps={num_steps} must be a multiple of '
              f'{where}.accum_steps={v["accum_steps"]} (every update sees a full set)')
    return None
  schema.check(WHERE, optim_config_, optim_config().to_dict(), required=True,
               choices={'name': OPTIMIZERS, 'schedule': SCHEDULES}, rules=_RULES,
               relations=(_fields_apply, whole_updates))


def make_schedule(optim_config: Any, num_updates: int) -> optax.Schedule:
  """Linear warmup from 0 to `lr` over `warmup_steps`, then cosine decay or constant.

  The cosine decays to `lr * end_lr_ratio` at `num_updates` (optimizer updates, not
  micro-batches).
  """
  c = optim_config
  if c.schedule not in SCHEDULES:
    raise ValueError(f'config.optim.schedule={c.schedule!r}; valid choices: {SCHEDULES}')
  warmup = int(c.warmup_steps)
  if c.schedule == 'cosine':
    return optax.warmup_cosine_decay_schedule(
        init_value=0.0, peak_value=c.lr, warmup_steps=warmup,
        decay_steps=max(num_updates, warmup + 1), end_value=c.lr * c.end_lr_ratio)
  if warmup == 0:
    return optax.constant_schedule(c.lr)
  return optax.join_schedules(
      [optax.linear_schedule(0.0, c.lr, warmup), optax.constant_schedule(c.lr)], [warmup])


def decay_mask(params: Any) -> Any:
  """Weight decay applies to matrices/kernels only, not to biases or norm scales."""
  return jax.tree.map(lambda p: p.ndim > 1, params)


def make_optimizer(optim_config: Any, num_steps: int) -> optax.GradientTransformation:
  """Builds the full transformation: clip -> optimizer (+ weight decay) -> accumulation.

  Args:
    optim_config: `config.optim` (name, lr, schedule, warmup_steps, end_lr_ratio,
      weight_decay, grad_clip, accum_steps, momentum, b1, b2, eps, rms_decay).
    num_steps: total micro-batch steps of the run (`config.train.num_steps`).
  """
  c = optim_config
  if c.name not in OPTIMIZERS:
    raise ValueError(f'config.optim.name={c.name!r}; valid choices: {OPTIMIZERS}')
  accum = int(c.accum_steps)
  schedule = make_schedule(c, max(1, num_steps // accum))

  chain = []
  if c.grad_clip > 0:
    chain.append(optax.clip_by_global_norm(c.grad_clip))
  if c.name == 'adamw':
    chain.append(optax.adamw(schedule, b1=c.b1, b2=c.b2, eps=c.eps,
                             weight_decay=c.weight_decay, mask=decay_mask))
  else:
    # Coupled (L2) decay for SGD/RMSProp, as PyTorch's `weight_decay`: wd * param is added to
    # the gradient before the optimizer (for plain SGD this equals decoupled decay times lr).
    if c.weight_decay > 0:
      chain.append(optax.add_decayed_weights(c.weight_decay, mask=decay_mask))
    if c.name == 'sgd':
      chain.append(optax.sgd(schedule, momentum=c.momentum or None, nesterov=False))
    else:
      chain.append(optax.rmsprop(schedule, decay=c.rms_decay, eps=c.eps,
                                 momentum=c.momentum or None))
  tx = optax.chain(*chain)
  if accum > 1:
    tx = optax.MultiSteps(tx, every_k_schedule=accum)
  return tx


def current_lr(optim_config: Any, num_steps: int, step: Any) -> Any:
  """Learning rate in effect at micro-batch `step` (for logging)."""
  accum = int(optim_config.accum_steps)
  return make_schedule(optim_config, max(1, num_steps // accum))(step // accum)


DISCRIMINATOR_SUFFIX = '_discriminator'  # top-level parameter subtrees of a GAN discriminator


def with_discriminator(tx: optax.GradientTransformation, adversarial_config: Any
                       ) -> optax.GradientTransformation:
  """`tx` for the model and its own Adam (`config.objectives.adversarial`: lr, b1, b2, at a
  constant rate, as DCGAN) for the discriminator's parameters, as one transformation whose
  state holds both optimizers' states (so the train state and checkpoints hold both)."""
  a = adversarial_config
  labels = lambda params: {
      name: jax.tree.map(lambda _, d=name.endswith(DISCRIMINATOR_SUFFIX):
                         'discriminator' if d else 'model', sub)
      for name, sub in params.items()}
  return optax.multi_transform(
      {'model': tx, 'discriminator': optax.adam(float(a.lr), b1=float(a.b1), b2=float(a.b2))},
      labels)

