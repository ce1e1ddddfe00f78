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
import optax

OPTIMIZERS = ('adamw', 'sgd', 'rmsprop')
SCHEDULES = ('cosine', 'constant')


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
