"""Autoregressive decoding: greedy and beam search over a caller-supplied step function.

Each search is one lax.while_loop, so a caller can jit the whole decode (batch size, beam size
and max_len static) and the search stops early on device, with no host round trip per token.
Nothing here knows about Flax: a model plugs in through `Step`, which maps the sequences so far
and a cache (any pytree whose leaves have leading axis N) to next-token logits and a new cache.
Both searches score tokens by float32 log-softmax of the logits.

Beam search follows Flax's examples/wmt/decode.py and T5X: K live and K finished sequences per
example; each step keeps the 2K best of the K*V extensions of the live beams; those ending
(EOS, or the last slot) join the finished pool scored by `length_normalised`, the K best others
become the live beams, and every cache leaf is gathered by parent row. As in fairseq, an EOS
extension finishes only if it ranks among the K best (an EOS ranked K+1..2K is dropped), so a
beam of width 1 follows greedy search and, without a length penalty, returns its sequence. The search stops early once no live beam can beat the worst
finished one. Sequence layout everywhere: BOS at position 0, generated tokens, EOS, then PAD.
"""
from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from crossmodal.models.text import BOS_ID, EOS_ID, PAD_ID

# step(seqs [N, max_len] int32, t int32 scalar, cache) -> (logits [N, V], new cache). The logits
# score the token at position t + 1 given seqs[:, :t + 1]. A cached step reads only seqs[:, t]
# and its cache; an uncached one may read the whole prefix (and take cache = ()).
Step = Callable[[jax.Array, jax.Array, Any], tuple[jax.Array, Any]]

NEG_INF = float('-inf')


def repeat_beams(tree: Any, beam_size: int) -> Any:
  """Repeats every leaf beam_size times along axis 0 (row b*K + k is beam k of example b), the
  layout `beam_search` expects for the cache and any context the step closes over."""
  return jax.tree.map(lambda x: jnp.repeat(x, beam_size, axis=0), tree)


def length_normalised(logprob: jax.Array, length: jax.Array | int, alpha: float) -> jax.Array:
  """GNMT length penalty logprob / ((5 + length) / 6) ** alpha, so long outputs are not beaten
  by short ones merely for having fewer factors; alpha = 0 gives the raw log-prob. `length`
  counts the generated tokens including EOS (not BOS)."""
  return logprob / ((5.0 + jnp.asarray(length, jnp.float32)) / 6.0) ** alpha


def _check_max_len(max_len: int) -> None:
  if max_len < 2:
    raise ValueError(f'decoding: max_len must be >= 2 (BOS plus a token), got {max_len}')


def _start(n: int, max_len: int, bos_id: int, pad_id: int) -> jax.Array:
  return jnp.full((n, max_len), pad_id, jnp.int32).at[:, 0].set(bos_id)


def _log_softmax(logits: jax.Array) -> jax.Array:
  return jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)


def greedy(step: Step, cache: Any, batch_size: int, max_len: int, *, bos_id: int = BOS_ID,
           eos_id: int = EOS_ID, pad_id: int = PAD_ID) -> tuple[jax.Array, jax.Array]:
  """Argmax decoding (first index on ties) until every row has emitted EOS or the last slot is
  filled. Returns (seqs [B, max_len] int32, log-prob [B] float32 of the emitted tokens incl.
  EOS); a finished row gets PAD and adds nothing to its log-prob."""
  _check_max_len(max_len)

  def cond(state):
    t, _, _, done, _ = state
    return (t < max_len - 1) & ~jnp.all(done)

  def body(state):
    t, seqs, cache, done, logprob = state
    logits, cache = step(seqs, t, cache)
    logits = logits.astype(jnp.float32)
    tok = jnp.argmax(logits, axis=-1).astype(jnp.int32)  # on the logits: no rounding ties
    tok_lp = jnp.take_along_axis(_log_softmax(logits), tok[:, None], axis=-1)[:, 0]
    logprob = logprob + jnp.where(done, 0.0, tok_lp)
    tok = jnp.where(done, pad_id, tok)
    return t + 1, seqs.at[:, t + 1].set(tok), cache, done | (tok == eos_id), logprob

  init = (jnp.int32(0), _start(batch_size, max_len, bos_id, pad_id), cache,
          jnp.zeros(batch_size, bool), jnp.zeros(batch_size, jnp.float32))
  _, seqs, _, _, logprob = jax.lax.while_loop(cond, body, init)
  return seqs, logprob


def beam_search(step: Step, cache: Any, batch_size: int, beam_size: int, max_len: int, *,
                length_penalty: float = 0.0, bos_id: int = BOS_ID, eos_id: int = EOS_ID,
                pad_id: int = PAD_ID) -> tuple[jax.Array, jax.Array]:
  """Beam search with GNMT length normalisation (alpha = `length_penalty`).

  `cache` (and any context the step closes over) has leading axis B*K, already expanded with
  `repeat_beams`. Returns (seqs [B, K, max_len] int32 best first, scores [B, K] float32).
  A beam that fills the last slot without EOS counts as finished, so K sequences come back;
  slots no finite-probability sequence could fill score -inf.
  """
  _check_max_len(max_len)
  b, k = batch_size, beam_size
  rows = jnp.arange(b)[:, None]

  def cond(state):
    t, _, live_lp, _, _, fin_scores = state
    # A live beam's log-prob only falls; its normalised score is best at its shortest or
    # longest possible final length (the penalty is monotone in length for either sign of
    # alpha; for alpha >= 0 it is max length, as in T5X).
    best_live = jnp.max(jnp.maximum(length_normalised(live_lp, t + 1, length_penalty),
                                    length_normalised(live_lp, max_len - 1, length_penalty)),
                        axis=1)
    beaten = jnp.min(fin_scores, axis=1) > best_live
    return (t < max_len - 1) & ~jnp.all(beaten)

  def body(state):
    t, live, live_lp, cache, fin, fin_scores = state
    logits, cache = step(live.reshape(b * k, max_len), t, cache)
    v = logits.shape[-1]
    cand_lp = (live_lp[:, :, None] + _log_softmax(logits).reshape(b, k, v)).reshape(b, k * v)
    top_lp, top_idx = jax.lax.top_k(cand_lp, 2 * k)  # ties: lower index (older beam) first
    parent, tok = top_idx // v, (top_idx % v).astype(jnp.int32)
    cand = live[rows, parent].at[:, :, t + 1].set(tok)  # [B, 2K, max_len]
    eos, last = tok == eos_id, t + 1 == max_len - 1
    ends = (eos & (jnp.arange(2 * k) < k)[None]) | (last & ~eos)
    # Finished pool: the K best of the old pool (first, so it wins ties) and the new endings.
    scores = jnp.where(ends, length_normalised(top_lp, t + 1, length_penalty), NEG_INF)
    fin_scores, i = jax.lax.top_k(jnp.concatenate([fin_scores, scores], axis=1), k)
    fin = jnp.concatenate([fin, cand], axis=1)[rows, i]
    live_lp, i = jax.lax.top_k(jnp.where(eos | last, NEG_INF, top_lp), k)
    parents = parent[rows, i]  # [B, K]: each new beam's parent among its example's beams
    # Gathered within each example, so a cache sharded over examples stays where it is.
    cache = jax.tree.map(lambda x: jax.vmap(lambda xb, p: xb[p])(
        x.reshape((b, k) + x.shape[1:]), parents).reshape(x.shape), cache)
    return t + 1, cand[rows, i], live_lp, cache, fin, fin_scores

  seqs = _start(b * k, max_len, bos_id, pad_id).reshape(b, k, max_len)
  # Only beam 0 starts live: the K copies are identical and would otherwise fill the beam.
  live_lp = jnp.tile(jnp.array([0.0] + [NEG_INF] * (k - 1), jnp.float32), (b, 1))
  init = (jnp.int32(0), seqs, live_lp, cache, seqs, jnp.full((b, k), NEG_INF, jnp.float32))
  _, _, _, _, fin, fin_scores = jax.lax.while_loop(cond, body, init)
  return fin, fin_scores
