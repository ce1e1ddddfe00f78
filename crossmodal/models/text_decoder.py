"""A text decoder that reads another modality: autoregressive over the byte tokens of
models/text.py, each layer a causal self-attention layer and then a cross-attention layer to
the source modalities' tokens, both the transformer layer every stack here uses
(models/attention.py). The cross layer joins its attention output h with the stream's own
state s as the crossattn fusion does (`combine`, default z = [h; s] W_O).

Training is teacher forcing (objectives.py, 'generation'): the decoder reads the target's
tokens 0..L-2 and scores tokens 1..L-1. `generate` decodes inside jit with greedy or beam
search (models/decoding.py), either with a key/value cache (one position per step) or by
rerunning the whole prefix each step; the two give the same tokens (tests/test_generation.py).
"""
from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from crossmodal.models import attention as attention_lib
from crossmodal.models import decoding
from crossmodal.models import text as text_lib

_embed_init = nn.initializers.normal(stddev=0.02)
# Ids a decoder never emits: it starts from BOS and pads after EOS itself.
NEVER_EMITTED = (text_lib.PAD_ID, text_lib.BOS_ID)


class TextDecoder(nn.Module):
  """ids [B, L] -> logits [B, L, VOCAB_SIZE] (float32) of the next token at every position.

  contexts: the source modalities' tokens, one [B, N_i, D_i] array each, with
  `context_masks` [B, N_i] (False: a padded token, or a missing modality's). With
  `decode=True` it reads one position per call, `ids` [B, 1] at `decode_index`, and keeps
  the self-attention keys and values in the 'cache' collection.
  """
  dim: int
  max_len: int
  num_layers: int = 2
  num_heads: int = 4
  mlp_ratio: int = 4
  dropout: float = 0.0
  combine: str = 'concat_proj'  # attention.COMBINES, the cross layer's
  decode: bool = False
  attention: str = 'einsum'
  remat: str = 'none'
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, ids: jax.Array, contexts: Sequence[jax.Array],
               context_masks: Sequence[jax.Array], train: bool = False,
               decode_index: jax.Array | None = None) -> jax.Array:
    b, length = ids.shape
    if length > self.max_len:
      raise ValueError(f'TextDecoder: {length} target tokens, more than max_len='
                       f'{self.max_len} (config.objectives.generation.max_len)')
    kw = dict(dtype=self.dtype, param_dtype=self.param_dtype)
    x = nn.Embed(text_lib.VOCAB_SIZE, self.dim, embedding_init=_embed_init, name='embed',
                 **kw)(ids)
    positions = self.param('positions', _embed_init, (self.max_len, self.dim))
    if self.decode and decode_index is not None:
      x = x + jax.lax.dynamic_slice_in_dim(positions, decode_index, 1)[None]
      mask = jnp.ones((b, 1), bool)  # generated tokens are never padding
    else:
      x = x + positions[None, :length]
      mask = ids != text_lib.PAD_ID
    x = nn.Dropout(self.dropout, deterministic=not train)(x)
    layer = dict(num_heads=self.num_heads, mlp_ratio=self.mlp_ratio, dropout=self.dropout,
                 attention=self.attention, **kw)
    remat = 'none' if self.decode else self.remat  # nothing to recompute without a backward
    for i in range(self.num_layers):
      x, _ = attention_lib.transformer_layer(
          remat, name=f'self_{i}', causal=True, decode=self.decode, **layer)(
              x, mask=mask, train=train, decode_index=decode_index)
      x, _ = attention_lib.transformer_layer(
          remat, name=f'cross_{i}', combine=self.combine, **layer)(
              x, list(contexts), mask=mask, context_masks=list(context_masks), train=train)
    x = nn.LayerNorm(name='norm', **kw)(x)
    return nn.Dense(text_lib.VOCAB_SIZE, name='logits', **kw)(x).astype(jnp.float32)


def generate(model: nn.Module, variables: Mapping[str, Any], batch: Mapping[str, jax.Array],
             present: jax.Array | None = None, *, beam_size: int = 1,
             length_penalty: float = 0.0, cache: bool = True) -> dict[str, jax.Array]:
  """Text generated from `batch`'s source modalities by a CrossModalModel with a text
  decoder: {'generated': ids [B, max_len] (BOS ... EOS, then PAD), 'score': [B]} (the
  summed log-prob, length-normalised with `length_penalty` under beam search), and the
  teacher-forced `generation_logits` when the batch holds the target. Jittable; beam_size 1
  is greedy search."""
  out = model.apply(variables, batch, present=present, train=False)
  contexts, masks = out['generation_context']
  size = contexts[0].shape[0]
  decoder = model.text_decoder_module(decode=cache)
  params = {'params': variables['params']['text_decoder']}
  if beam_size > 1:
    contexts, masks = decoding.repeat_beams((contexts, masks), beam_size)
  rows = size * beam_size
  length = decoder.max_len
  never = jnp.zeros((text_lib.VOCAB_SIZE,), bool).at[jnp.array(NEVER_EMITTED)].set(True)

  def scores(logits):
    return jnp.where(never, -jnp.inf, logits)

  if cache:
    shapes = jax.eval_shape(decoder.init, jax.random.key(0),
                            jnp.zeros((rows, length), jnp.int32), contexts, masks)['cache']
    state = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), shapes)

    def step(seqs, t, state):
      ids = jax.lax.dynamic_slice_in_dim(seqs, t, 1, axis=1)
      logits, updated = decoder.apply({**params, 'cache': state}, ids, contexts, masks,
                                      decode_index=t, mutable=['cache'])
      return scores(logits[:, 0]), updated['cache']
  else:
    state = ()

    def step(seqs, t, state):
      logits = decoder.apply(params, seqs, contexts, masks)
      return scores(jax.lax.dynamic_index_in_dim(logits, t, axis=1, keepdims=False)), state

  if beam_size == 1:
    seqs, score = decoding.greedy(step, state, size, length)
  else:
    seqs, score = decoding.beam_search(step, state, size, beam_size, length,
                                       length_penalty=length_penalty)
    seqs, score = seqs[:, 0], score[:, 0]
  teacher_forced = {k: out[k] for k in ('generation_logits',) if k in out}
  return {'generated': seqs, 'score': score, **teacher_forced}
