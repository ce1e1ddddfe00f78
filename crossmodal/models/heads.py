"""Classifier head shared by every fusion (each fusion owns its own instance(s))."""
from __future__ import annotations

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp


class MLPHead(nn.Module):
  """ReLU MLP with dropout after each hidden layer; `hidden=()` is a linear classifier.

  The MultiBench AV-MNIST head is `MLPHead(hidden=(100,), num_classes=10)`.
  """
  hidden: tuple[int, ...]
  num_classes: int
  dropout: float = 0.0
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    for i, width in enumerate(self.hidden):
      x = nn.Dense(width, dtype=self.dtype, param_dtype=self.param_dtype, name=f'hidden_{i}')(x)
      x = nn.relu(x)
      x = nn.Dropout(self.dropout, deterministic=not train)(x)
    return nn.Dense(self.num_classes, dtype=self.dtype, param_dtype=self.param_dtype,
                    name='logits')(x)
