"""Masked multi-head attention and the pre-LN transformer layer (crossmodal.models.attention)."""
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from crossmodal.models.attention import MultiHeadAttention, TransformerLayer

B, NQ, NK, D, H = 3, 4, 6, 8, 2


def key(seed):
  # 'rbg' keys compile far faster than threefry on CPU; the code under test is the same.
  return jax.random.key(seed, impl='rbg')


def _normal(seed, shape):
  return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _inputs(seed=0):
  rng = np.random.default_rng(seed)
  q = _normal(seed, (B, NQ, D))
  kv = _normal(seed + 1, (B, NK, 5))  # keys may have another width than queries
  key_mask = rng.uniform(size=(B, NK)) > 0.4
  key_mask[0] = [True, False, True, False, False, True]
  key_mask[2] = False  # an example with no valid key at all
  query_mask = np.ones((B, NQ), bool)
  query_mask[1, 3] = False
  return q, kv, jnp.asarray(key_mask), jnp.asarray(query_mask)


def _numpy_attention(p, q, kv, key_mask, query_mask):
  """Reference: per-head softmax(q k^T / sqrt(d)) v over valid keys, then output projection."""
  q, kv = np.asarray(q, np.float64), np.asarray(kv, np.float64)
  qh = np.einsum('bnd,dhk->bnhk', q, p['query']['kernel']) + p['query']['bias']
  kh = np.einsum('bnd,dhk->bnhk', kv, p['key']['kernel']) + p['key']['bias']
  vh = np.einsum('bnd,dhk->bnhk', kv, p['value']['kernel']) + p['value']['bias']
  logits = np.einsum('bqhk,bshk->bhqs', qh, kh) / np.sqrt(qh.shape[-1])
  out = np.zeros((q.shape[0], q.shape[1], p['out']['kernel'].shape[-1]))
  weights = np.zeros(logits.shape)
  for b in range(q.shape[0]):
    keys = np.flatnonzero(key_mask[b])
    for i in range(q.shape[1]):
      if not query_mask[b, i] or len(keys) == 0:
        continue
      lg = logits[b, :, i, keys]  # [keys, H]
      w = np.exp(lg - lg.max(0)) / np.exp(lg - lg.max(0)).sum(0)
      weights[b, :, i, keys] = w
      ctx = np.einsum('sh,shk->hk', w, vh[b, keys])
      out[b, i] = np.einsum('hk,hko->o', ctx, p['out']['kernel']) + p['out']['bias']
  return out, weights


def test_attention_matches_numpy_reference_with_masks():
  q, kv, key_mask, query_mask = _inputs()
  mha = MultiHeadAttention(num_heads=H)
  variables = mha.init(key(1), q, kv, key_mask=key_mask)
  out, weights = mha.apply(variables, q, kv, key_mask=key_mask, query_mask=query_mask,
                           return_weights=True)
  params = jax.tree.map(np.asarray, variables['params'])
  ref_out, ref_w = _numpy_attention(params, q, kv, np.asarray(key_mask), np.asarray(query_mask))
  assert out.shape == (B, NQ, D) and weights.shape == (B, H, NQ, NK)
  np.testing.assert_allclose(out, ref_out, atol=1e-5)
  np.testing.assert_allclose(weights, ref_w, atol=1e-6)


def test_weights_rows_sum_to_one_over_valid_keys_and_zero_elsewhere():
  q, kv, key_mask, query_mask = _inputs()
  mha = MultiHeadAttention(num_heads=H)
  variables = mha.init(key(1), q, kv)
  out, w = mha.apply(variables, q, kv, key_mask=key_mask, query_mask=query_mask,
                     return_weights=True)
  w = np.asarray(w)
  row_valid = np.asarray(query_mask)[:, None, :] & np.asarray(key_mask).any(1)[:, None, None]
  np.testing.assert_allclose(w.sum(-1), np.broadcast_to(row_valid, w.shape[:3]), atol=1e-6)
  assert np.all(w[np.broadcast_to(~np.asarray(key_mask)[:, None, None, :], w.shape)] == 0)
  # Masked queries and examples without valid keys give exactly zero output (no bias leak).
  assert np.all(np.asarray(out)[1, 3] == 0) and np.all(np.asarray(out)[2] == 0)
  assert np.abs(np.asarray(out)[0]).sum() > 0


def test_masked_keys_do_not_influence_output():
  q, kv, key_mask, query_mask = _inputs()
  mha = MultiHeadAttention(num_heads=H)
  variables = mha.init(key(1), q, kv)
  noise = 100 * _normal(5, kv.shape)
  kv2 = jnp.where(key_mask[..., None], kv, noise)
  a = mha.apply(variables, q, kv, key_mask=key_mask)[0]
  b = mha.apply(variables, q, kv2, key_mask=key_mask)[0]
  np.testing.assert_array_equal(a, b)
  # ... while a valid key does influence it (the test can fail).
  c = mha.apply(variables, q, kv.at[0, 0].add(1.0), key_mask=key_mask)[0]
  assert not np.allclose(a[0], c[0])


def test_all_keys_masked_gives_zeros_and_finite_gradients():
  q, kv, _, _ = _inputs()
  mha = MultiHeadAttention(num_heads=H)
  variables = mha.init(key(1), q, kv)
  none = jnp.zeros((B, NK), bool)
  out, w = mha.apply(variables, q, kv, key_mask=none, return_weights=True)
  assert np.all(np.asarray(out) == 0) and np.all(np.asarray(w) == 0)

  def loss(params, inputs):
    return mha.apply({'params': params}, inputs, kv, key_mask=none)[0].sum()

  grads = jax.grad(loss, argnums=(0, 1))(variables['params'], q)
  assert all(np.isfinite(g).all() for g in jax.tree.leaves(grads))


def test_without_output_projection_returns_concatenated_heads():
  q, kv, key_mask, _ = _inputs()
  mha = MultiHeadAttention(num_heads=H, qkv_dim=6, output_projection=False)
  variables = mha.init(key(1), q, kv)
  assert 'out' not in variables['params']
  out, w = mha.apply(variables, q, kv, key_mask=key_mask, return_weights=True)
  assert out.shape == (B, NQ, 6)
  v = np.einsum('bnd,dhk->bnhk', np.asarray(kv), variables['params']['value']['kernel']
                ) + variables['params']['value']['bias']
  np.testing.assert_allclose(out, np.einsum('bhqs,bshk->bqhk', w, v).reshape(B, NQ, 6),
                             atol=1e-5)


def test_attention_errors_are_clear():
  q, kv, _, _ = _inputs()
  with pytest.raises(ValueError, match='not divisible by num_heads=3'):
    MultiHeadAttention(num_heads=3).init(key(0), q, kv)
  with pytest.raises(ValueError, match='key_mask must have shape'):
    MultiHeadAttention(num_heads=2).init(key(0), q, kv,
                                         key_mask=jnp.ones((B, NK + 1), bool))
  with pytest.raises(ValueError, match="valid choices: \\('residual', 'concat_proj', 'concat_proj_residual'\\)"):
    TransformerLayer(2, combine='sum').init(key(0), q)


def test_dropout_needs_train_and_is_deterministic_given_rng():
  q, kv, key_mask, _ = _inputs()
  layer = TransformerLayer(num_heads=H, dropout=0.3)
  variables = layer.init(key(1), q, [kv], context_masks=[key_mask])

  def run(train, seed=0):
    return layer.apply(variables, q, [kv], context_masks=[key_mask], train=train,
                       rngs={'dropout': key(seed)})[0]

  np.testing.assert_array_equal(run(False), layer.apply(variables, q, [kv],
                                                        context_masks=[key_mask])[0])
  np.testing.assert_array_equal(run(True, 3), run(True, 3))
  assert not np.allclose(run(True, 3), run(False))
  assert not np.allclose(run(True, 3), run(True, 4))


def test_concat_proj_layer_computes_h_s_times_w_o():
  """z = [h; s] W_O with s the raw state, then z + MLP(LN(z)): rebuilt from sub-modules."""
  q, kv, key_mask, query_mask = _inputs()
  layer = TransformerLayer(num_heads=H, mlp_ratio=2, combine='concat_proj')
  variables = layer.init(key(1), q, [kv])
  p = variables['params']
  got, (w,) = layer.apply(variables, q, [kv], mask=query_mask, context_masks=[key_mask],
                          return_weights=True)
  ln = nn.LayerNorm()
  y = ln.apply({'params': p['norm_q']}, q)
  c = ln.apply({'params': p['norm_kv_0']}, kv)
  h, w_ref = MultiHeadAttention(H, out_dim=D, output_projection=False).apply(
      {'params': p['attention_0']}, y, c, key_mask=key_mask, query_mask=query_mask,
      return_weights=True)
  z = nn.Dense(D).apply({'params': p['out_proj']}, jnp.concatenate([h, q], -1))
  m = nn.Dense(2 * D).apply({'params': p['mlp_in']}, ln.apply({'params': p['norm_mlp']}, z))
  z = z + nn.Dense(D).apply({'params': p['mlp_out']}, nn.gelu(m))
  assert p['out_proj']['kernel'].shape == (2 * D, D)
  np.testing.assert_allclose(got, z, atol=1e-5)
  np.testing.assert_allclose(w, w_ref, atol=1e-6)


def test_residual_self_attention_layer_hides_masked_tokens_and_sums_sources():
  q, kv, key_mask, _ = _inputs()
  layer = TransformerLayer(num_heads=H)
  x = _normal(3, (B, NK, D))
  variables = layer.init(key(1), x)
  qm = key_mask  # self-attention over x with its mask
  noisy = jnp.where(qm[..., None], x, 50.0)
  a = layer.apply(variables, x, mask=qm)[0]
  b = layer.apply(variables, noisy, mask=qm)[0]
  np.testing.assert_allclose(np.asarray(a)[np.asarray(qm)], np.asarray(b)[np.asarray(qm)],
                             atol=1e-6)
  # Two contexts with residual combine: a context with no valid key adds exactly nothing.
  two = TransformerLayer(num_heads=H)
  v2 = two.init(key(2), q, [kv, kv])
  one_ctx = {'params': {k: v for k, v in v2['params'].items()
                        if k not in ('attention_1', 'norm_kv_1')}}
  got = two.apply(v2, q, [kv, 7 * kv], context_masks=[key_mask, jnp.zeros_like(key_mask)])[0]
  want = TransformerLayer(num_heads=H).apply(one_ctx, q, [kv], context_masks=[key_mask])[0]
  np.testing.assert_allclose(got, want, atol=1e-6)


def test_bfloat16_compute_keeps_float32_params():
  q, kv, key_mask, _ = _inputs()
  layer = TransformerLayer(num_heads=H, dtype=jnp.bfloat16)
  variables = layer.init(key(1), q, [kv])
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(variables))
  out, (w,) = layer.apply(variables, q, [kv], context_masks=[key_mask], return_weights=True)
  ref = TransformerLayer(num_heads=H).apply(variables, q, [kv], context_masks=[key_mask])[0]
  assert out.dtype == jnp.bfloat16 and w.dtype == jnp.float32
  np.testing.assert_allclose(np.asarray(out, np.float32), ref, atol=0.15, rtol=0.05)
