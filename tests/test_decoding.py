"""Greedy and beam search over a step function (crossmodal.models.decoding)."""
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from crossmodal.models import decoding
from crossmodal.models.text import BOS_ID, EOS_ID, PAD_ID

# Search under jit with the step and sizes static; the length penalty stays traced, so
# searches that differ only in it or in the tables (passed as the cache) share one compile.
greedy = jax.jit(decoding.greedy, static_argnums=(0, 2, 3))
beam_search = jax.jit(decoding.beam_search, static_argnums=(0, 2, 3, 4))


def _tables(seed, n, max_len, v, eos_bias=0.0):
  """Random logit tables [n, max_len, v, v] (logits of the next token given position and last
  token); PAD and BOS are never produced, EOS is shifted by eos_bias."""
  t = np.random.default_rng(seed).normal(size=(n, max_len, v, v)).astype(np.float32) * 2
  t[..., EOS_ID] += eos_bias
  t[..., [PAD_ID, BOS_ID]] = -np.inf
  return t


def table_step(seqs, t, tables):
  """Uncached step whose logits are tables[row, t, last token]; the tables ride in the cache
  (every row of an example holds the same table, so gathering by parent keeps them)."""
  return tables[jnp.arange(seqs.shape[0]), t, seqs[:, t]], tables


def _log_softmax(x):
  x = np.asarray(x, np.float64)
  m = x.max()
  return x - m - np.log(np.exp(x - m).sum())


def _greedy_ref(tables, max_len):
  out, lps = np.full((len(tables), max_len), PAD_ID), np.zeros(len(tables))
  for r, tab in enumerate(tables):
    out[r, 0] = BOS_ID
    for t in range(max_len - 1):
      logits = tab[t, out[r, t]]
      out[r, t + 1] = np.argmax(logits)
      lps[r] += _log_softmax(logits)[out[r, t + 1]]
      if out[r, t + 1] == EOS_ID:
        break
  return out, lps


def _check_layout(seqs, max_len):
  """BOS at 0, then generated ids (never PAD/BOS), at most one EOS, PAD after it."""
  assert seqs.shape[-1] == max_len
  for row in np.asarray(seqs).reshape(-1, max_len):
    assert row[0] == BOS_ID
    eos = np.flatnonzero(row == EOS_ID)
    end = eos[0] + 1 if len(eos) else max_len
    assert len(eos) <= 1
    assert np.all(row[end:] == PAD_ID)
    assert not np.isin(row[1:end], [PAD_ID, BOS_ID]).any()


def test_greedy_matches_numpy_reference():
  b, max_len, v = 6, 8, 8
  tables = np.repeat(_tables(0, b, 1, v, eos_bias=0.7), max_len, axis=1)  # logits = T[last]
  seqs, lp = greedy(table_step, jnp.asarray(tables), b, max_len)
  ref_seqs, ref_lp = _greedy_ref(tables, max_len)
  ended = (ref_seqs == EOS_ID).any(1)
  assert ended.any() and not ended.all()  # both stopping rules are exercised
  np.testing.assert_array_equal(seqs, ref_seqs)
  np.testing.assert_allclose(lp, ref_lp, rtol=1e-5)
  assert seqs.dtype == jnp.int32 and lp.dtype == jnp.float32


def _eos_runner_up(table, seq):
  """Whether EOS ranked second at some step of greedy's path `seq` (a K = 1 beam search that
  let a runner-up EOS finish would return a different sequence there)."""
  for t in range(len(seq) - 1):
    if seq[t + 1] == PAD_ID:
      break
    if np.argsort(-_log_softmax(table[t, seq[t]]), kind='stable')[1] == EOS_ID:
      return True
  return False


def test_beam_size_one_is_greedy():
  """With K = 1 and no length penalty beam search returns greedy's sequence and log-prob,
  also on paths where EOS was runner-up (it finishes only when among the K best)."""
  b, max_len, v = 5, 7, 8
  runner_up = 0
  for seed in (1, 2, 3):
    tables = _tables(seed, b, max_len, v, eos_bias=0.5)
    seqs, lp = greedy(table_step, jnp.asarray(tables), b, max_len)
    beams, scores = beam_search(table_step, jnp.asarray(tables), b, 1, max_len,
                                length_penalty=0.0)
    np.testing.assert_array_equal(beams[:, 0], seqs)
    np.testing.assert_allclose(scores[:, 0], lp, rtol=1e-6)
    runner_up += sum(_eos_runner_up(tab, list(np.asarray(s))) for tab, s in zip(tables, seqs))
  assert runner_up > 0  # the case where a T5X-style pool would differ occurred
  # Without EOS neither search can end early, and both take the argmax path to the last slot.
  tables[..., EOS_ID] = -np.inf
  seqs, lp = greedy(table_step, jnp.asarray(tables), b, max_len)
  beams, scores = beam_search(table_step, jnp.asarray(tables), b, 1, max_len)
  np.testing.assert_array_equal(beams[:, 0], seqs)
  np.testing.assert_allclose(scores[:, 0], lp, rtol=1e-6)


def _brute_force(table, max_len, alpha, usable=(3, 4)):
  """Every sequence the table can produce, as (score, ids after BOS), best first."""
  found = []
  for n in range(1, max_len):
    lasts = (*usable, EOS_ID) if n == max_len - 1 else (EOS_ID,)
    for body in itertools.product(usable, repeat=n - 1):
      for last in lasts:
        seq = (BOS_ID, *body, last)
        lp = sum(_log_softmax(table[t, seq[t]])[seq[t + 1]] for t in range(n))
        found.append((float(decoding.length_normalised(lp, n, alpha)), seq))
  return sorted(found, key=lambda f: -f[0])


@pytest.mark.parametrize('alpha', [0.0, 0.6, -0.5])
def test_beam_search_is_exact_when_the_beam_holds_every_prefix(alpha):
  # V = 5: PAD, BOS, EOS and two usable tokens; 31 possible outputs, at most 8 live prefixes.
  b, k, max_len, v = 2, 8, 5, 5
  tables = _tables(4, b, max_len, v)
  beams, scores = beam_search(table_step, decoding.repeat_beams(jnp.asarray(tables), k), b, k,
                              max_len, length_penalty=alpha)
  assert beams.shape == (b, k, max_len) and scores.shape == (b, k)
  _check_layout(beams, max_len)
  for e in range(b):
    ref = _brute_force(tables[e], max_len, alpha)[:k]
    got = [tuple(int(x) for x in row if x != PAD_ID) for row in np.asarray(beams[e])]
    assert got == [seq for _, seq in ref]
    np.testing.assert_allclose(scores[e], [s for s, _ in ref], rtol=1e-5)
    assert len(set(got)) == k and np.all(np.diff(scores[e]) <= 0)


def long_tail_step(seqs, t, cache):
  """EOS is likely first (log-prob -0.37), but after a token 3 (-1.87) another 3 is near
  certain: the long sequence has the lower log-prob and, at a large alpha, the higher score."""
  first = jnp.array([-jnp.inf, -jnp.inf, 0.0, -1.5, -1.5])
  later = jnp.array([-jnp.inf, -jnp.inf, -10.0, 0.0, -10.0])
  return jnp.broadcast_to(jnp.where(t == 0, first, later), (seqs.shape[0], 5)), cache


def short_step(seqs, t, cache):
  """EOS first has log-prob -1.31; a 3 (-0.31) then EOS (near certain) beats it."""
  first = jnp.array([-jnp.inf, -jnp.inf, 0.0, 1.0, -jnp.inf])
  later = jnp.array([-jnp.inf, -jnp.inf, 0.0, -10.0, -10.0])
  return jnp.broadcast_to(jnp.where(t == 0, first, later), (seqs.shape[0], 5)), cache


def test_early_stop_keeps_beams_that_can_still_win():
  """The search must not stop while a live beam could still win at another length: with
  alpha = 2 the live beam normalised at its current length looks beaten after one token, with
  alpha = -2 it looks beaten at max length."""
  max_len = 10
  beams, scores = beam_search(long_tail_step, (), 1, 1, max_len, length_penalty=2.0)
  np.testing.assert_array_equal(beams[0, 0], [BOS_ID] + [3] * (max_len - 1))
  lp = np.log(np.exp(-1.5) / (1 + 2 * np.exp(-1.5))) - 8 * np.log1p(2 * np.exp(-10.0))
  np.testing.assert_allclose(scores[0, 0], lp / ((5 + max_len - 1) / 6) ** 2, rtol=1e-5)
  beams, _ = beam_search(long_tail_step, (), 1, 1, max_len, length_penalty=0.0)
  np.testing.assert_array_equal(beams[0, 0], [BOS_ID, EOS_ID] + [PAD_ID] * (max_len - 2))
  beams, scores = beam_search(short_step, (), 1, 1, max_len, length_penalty=-2.0)
  np.testing.assert_array_equal(beams[0, 0], [BOS_ID, 3, EOS_ID] + [PAD_ID] * (max_len - 3))
  lp = -np.log1p(np.exp(-1.0)) - np.log1p(2 * np.exp(-10.0))
  np.testing.assert_allclose(scores[0, 0], lp / (7 / 6) ** -2.0, rtol=1e-5)


def _history_logits(seed, v=8, buckets=5):
  """Logits that depend on the last token, the one before it, a position-weighted sum of the
  whole prefix (mod buckets) and a per-example context."""
  rng = np.random.default_rng(seed)
  last, before, hist = (jnp.asarray(rng.normal(size=s), jnp.float32) * 2
                        for s in ((v, v), (v, v), (buckets, v)))
  mask = jnp.asarray(np.isin(np.arange(v), [PAD_ID, BOS_ID]) * -1e9, jnp.float32)

  def logits(tok, tok_before, weighted_sum, ctx):
    return last[tok] + before[tok_before] + hist[weighted_sum % buckets] + ctx + mask
  return logits


def _steps(seed, ctx):
  """A cached step and an uncached one over the whole prefix, with identical logits."""
  logits = _history_logits(seed)

  def cached(seqs, t, cache):
    tok = seqs[:, t]
    hist = cache['hist'].at[:, t].set(tok)
    wsum = cache['wsum'] + tok * (t + 1)
    cache = dict(hist=hist, wsum=wsum, ctx=cache['ctx'])
    return logits(tok, hist[:, jnp.maximum(t - 1, 0)], wsum, cache['ctx']), cache

  def uncached(seqs, t, cache):
    pos = jnp.arange(seqs.shape[1])
    wsum = jnp.sum(jnp.where(pos <= t, seqs * (pos + 1), 0), axis=1)
    return logits(seqs[:, t], seqs[:, jnp.maximum(t - 1, 0)], wsum, ctx), cache
  return cached, uncached


def _rescore(step, seqs, alpha):
  """Length-normalised log-prob of each finished sequence [N, L] under an uncached step."""
  lp, length = np.zeros(len(seqs)), np.zeros(len(seqs), int)
  for t in range(seqs.shape[1] - 1):
    logp = np.asarray(jax.nn.log_softmax(step(seqs, t, ())[0]))
    live = seqs[:, t + 1] != PAD_ID
    lp += np.where(live, logp[np.arange(len(seqs)), seqs[:, t + 1]], 0.0)
    length += live
  return np.asarray(decoding.length_normalised(lp, length, alpha))


def test_cached_and_uncached_steps_agree():
  b, k, max_len, v = 3, 3, 7, 8
  ctx = jnp.asarray(np.random.default_rng(5).normal(size=(b, v)), jnp.float32)
  cache = dict(hist=jnp.zeros((b, max_len), jnp.int32), wsum=jnp.zeros(b, jnp.int32), ctx=ctx)

  cached, uncached = _steps(6, ctx)
  seqs_c, lp_c = greedy(cached, cache, b, max_len)
  seqs_u, lp_u = greedy(uncached, (), b, max_len)
  np.testing.assert_array_equal(seqs_c, seqs_u)
  np.testing.assert_allclose(lp_c, lp_u, rtol=1e-6)

  cached, uncached = _steps(6, decoding.repeat_beams(ctx, k))
  beams_c, scores_c = beam_search(cached, decoding.repeat_beams(cache, k), b, k, max_len,
                                  length_penalty=0.6)
  beams_u, scores_u = beam_search(uncached, (), b, k, max_len, length_penalty=0.6)
  np.testing.assert_array_equal(beams_c, beams_u)
  np.testing.assert_allclose(scores_c, scores_u, rtol=1e-6)
  # The returned scores are those of the returned sequences, and the beams differ per example.
  np.testing.assert_allclose(_rescore(uncached, np.asarray(beams_u).reshape(b * k, -1), 0.6),
                             np.asarray(scores_u).reshape(-1), rtol=1e-5)
  assert not np.array_equal(beams_u[0], beams_u[1])


def test_layout_and_shapes_under_jit():
  b, k, max_len, v = 4, 3, 9, 8
  tables = jnp.asarray(_tables(7, b, max_len, v, eos_bias=0.5))
  seqs, lp = greedy(table_step, tables, b, max_len)
  assert seqs.shape == (b, max_len) and lp.shape == (b,)
  _check_layout(seqs, max_len)
  beams, scores = beam_search(table_step, decoding.repeat_beams(tables, k), b, k, max_len,
                              length_penalty=0.6)
  assert beams.shape == (b, k, max_len) and scores.shape == (b, k)
  assert beams.dtype == jnp.int32 and scores.dtype == jnp.float32
  _check_layout(beams, max_len)
  assert np.all(np.isfinite(scores)) and np.all(np.diff(scores, axis=1) <= 0)
  with pytest.raises(ValueError, match='max_len'):
    decoding.greedy(table_step, tables, b, 1)


def test_searches_stop_early():
  """A step that logs its calls: greedy stops once every row has ended, beam search once no
  live beam can beat the finished ones (EOS is unlikely at t=0 and near certain at t=1)."""
  b, k, max_len, v = 2, 2, 6, 5
  calls = []

  def step(seqs, t, cache):
    jax.debug.callback(lambda t: calls.append(int(t)), t)
    logits = jnp.full((seqs.shape[0], v), -10.0).at[:, EOS_ID].set(jnp.where(t == 1, 0.0, -20.0))
    return logits.at[:, :BOS_ID + 1].set(-jnp.inf), cache

  seqs, _ = greedy(step, (), b, max_len)
  jax.effects_barrier()
  assert calls == [0, 1] and np.all(seqs[:, 2] == EOS_ID)
  calls.clear()
  # t=1 finishes both live beams with EOS (log-prob ~ -0.7) and leaves live ones at ~ -10.7,
  # which can never catch up, so t=2 (of 4 possible) never runs.
  beams, scores = beam_search(step, (), b, k, max_len)
  jax.effects_barrier()
  assert calls == [0, 1]
  assert np.all(beams[:, :, 2] == EOS_ID) and np.all(np.isfinite(scores))


def test_helpers():
  tree = dict(a=jnp.arange(3), b=(jnp.ones((3, 2)),))
  rep = decoding.repeat_beams(tree, 2)
  np.testing.assert_array_equal(rep['a'], [0, 0, 1, 1, 2, 2])
  assert rep['b'][0].shape == (6, 2)
  np.testing.assert_allclose(decoding.length_normalised(-3.0, 4, 0.0), -3.0)
  np.testing.assert_allclose(decoding.length_normalised(-3.0, 4, 0.6), -3.0 / 1.5 ** 0.6,
                             rtol=1e-6)
