"""The switches where the attention fusions can follow MulT and MBT (docs/fusion.md): each one
does what the reference does, checked on a tiny case against a direct computation."""
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from crossmodal import objectives
from crossmodal.models import fusion as fusion_lib
from crossmodal.models.attention import TransformerLayer
from crossmodal.models.encoders import Encoded
from test_fusion import B, C, build, init, make_encoded, present_mask, run

pytestmark = pytest.mark.usefixtures('fast_prng')  # tests/conftest.py


def _close(a, b, tol=1e-5):
  np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=tol, atol=tol)


def test_sinusoidal_positions_are_fairseqs():
  """MulT's SinusoidalPositionalEmbedding (fairseq): positions from 1, [sin | cos] halves."""
  n, d = 5, 6
  half = d // 2
  freq = np.exp(np.arange(half) * -(math.log(10000) / (half - 1)))
  angles = np.arange(1, n + 1)[:, None] * freq[None]
  _close(fusion_lib.sinusoidal_positions(n, d), np.concatenate([np.sin(angles),
                                                                np.cos(angles)], 1))
  odd = fusion_lib.sinusoidal_positions(n, 7)
  assert odd.shape == (5, 7) and np.all(np.asarray(odd)[:, -1] == 0)


@pytest.mark.parametrize('fusion_type', ['crossattn', 'joint'])
def test_scaled_embeddings_and_sinusoids_are_mults_token_embedding(fusion_type):
  """x * sqrt(d) + sinusoids (MulT): the fusion with both switches equals the fusion without
  positions fed tokens * sqrt(d) + sinusoids, with the same parameters."""
  encoded, present = make_encoded(2), present_mask(2)
  mult = build(fusion_type, scale_embeddings=True, sinusoidal_positions=True)
  plain = build(fusion_type, positional_embeddings=False)
  variables = init(mult, encoded, present)
  assert jax.tree.structure(variables) == jax.tree.structure(init(plain, encoded, present))

  def embedded(e):
    n, d = e.tokens.shape[1:]
    return Encoded(e.tokens * math.sqrt(d) + fusion_lib.sinusoidal_positions(n, d), e.mask,
                   e.pooled)
  _close(run(mult, variables, encoded, present)['logits'],
         run(plain, variables, {m: embedded(e) for m, e in encoded.items()}, present)['logits'])


def test_embedding_dropout_acts_in_training_only():
  encoded, present = make_encoded(2), present_mask(2)
  base, dropped = build('joint', dropout=0.0), build('joint', dropout=0.0, embedding_dropout=0.5)
  variables = init(base, encoded, present)
  _close(run(dropped, variables, encoded, present)['logits'],
         run(base, variables, encoded, present)['logits'])
  assert not np.allclose(run(dropped, variables, encoded, present, train=True)['logits'],
                         run(base, variables, encoded, present, train=True)['logits'], atol=1e-4)


def test_shared_norm_is_one_layernorm_for_queries_and_keys():
  """MulT normalises queries and keys with one LayerNorm: the shared layer equals a layer with
  a norm per context whose parameters are copies of the query norm's (perturbed here, so that
  the norm is not the identity)."""
  rng = np.random.default_rng(0)
  x = jnp.asarray(rng.normal(size=(2, 3, 8)), jnp.float32)
  ctx = jnp.asarray(rng.normal(size=(2, 5, 8)), jnp.float32)
  shared = TransformerLayer(2, mlp_ratio=2, combine='concat_proj', shared_norm=True)
  variables = shared.init(jax.random.key(0), x, [ctx])
  params = jax.tree.map(lambda v: v + 0.3 * rng.normal(size=v.shape), variables['params'])
  assert not any(k.startswith('norm_kv') for k in params)
  separate = {**params, 'norm_kv_0': params['norm_q']}
  out_shared, _ = shared.apply({'params': params}, x, [ctx])
  layer = TransformerLayer(2, mlp_ratio=2, combine='concat_proj')
  out_separate, _ = layer.apply({'params': separate}, x, [ctx])
  _close(out_shared, out_separate)
  with pytest.raises(ValueError, match='shared_norm needs contexts as wide'):
    shared.init(jax.random.key(0), x, [ctx[..., :5]])
  other = {**separate, 'norm_kv_0': jax.tree.map(lambda v: v + 1.0, params['norm_q'])}
  assert not np.allclose(layer.apply({'params': other}, x, [ctx])[0], out_shared, atol=1e-3)


def _mlp_sublayer(z, p):
  """z + MLP(LN(z)) with a TransformerLayer's parameters (flax LayerNorm, epsilon 1e-6)."""
  mean = z.mean(-1, keepdims=True)
  y = (z - mean) / jnp.sqrt(((z - mean) ** 2).mean(-1, keepdims=True) + 1e-6)
  y = y * p['norm_mlp']['scale'] + p['norm_mlp']['bias']
  h = jax.nn.gelu(y @ p['mlp_in']['kernel'] + p['mlp_in']['bias'])
  return z + h @ p['mlp_out']['kernel'] + p['mlp_out']['bias']


def test_concat_proj_residual_adds_an_identity_path():
  """z = s + [h; s] W_O: with W_O zero the attention sublayer is the identity, so a target
  whose source is missing still passes its own state on (as in MulT's residual layer),
  where concat_proj passes on zeros."""
  rng = np.random.default_rng(1)
  x = jnp.asarray(rng.normal(size=(2, 3, 8)), jnp.float32)
  ctx = jnp.asarray(rng.normal(size=(2, 5, 8)), jnp.float32)
  layers = {c: TransformerLayer(2, mlp_ratio=2, combine=c)
            for c in ('concat_proj', 'concat_proj_residual')}
  variables = layers['concat_proj'].init(jax.random.key(0), x, [ctx])
  p = jax.tree.map(lambda v: v + 0.1 * rng.normal(size=v.shape), variables['params'])
  outs = {c: layer.apply({'params': p}, x, [ctx])[0] for c, layer in layers.items()}
  assert not np.allclose(outs['concat_proj'], outs['concat_proj_residual'], atol=1e-3)
  zeroed = {'params': {**p, 'out_proj': jax.tree.map(jnp.zeros_like, p['out_proj'])}}
  _close(layers['concat_proj_residual'].apply(zeroed, x, [ctx])[0], _mlp_sublayer(x, p))
  _close(layers['concat_proj'].apply(zeroed, x, [ctx])[0], _mlp_sublayer(0 * x, p))


@pytest.mark.parametrize('fusion_type', ['crossattn', 'bottleneck'])
def test_per_stream_heads_average_logits_and_losses_over_present_streams(fusion_type):
  """MBT: a classifier per modality stream; evaluation averages the present streams' logits,
  training averages their cross-entropies (objectives.compute)."""
  module = build(fusion_type, heads='per_stream')
  encoded, present = make_encoded(2), present_mask(2)
  variables = init(module, encoded, present)
  out = run(module, variables, encoded, present)
  assert out['stream_logits'].shape == (2, B, C)
  assert set(variables['params']) >= {'head_a', 'head_b'} and 'head' not in variables['params']
  per, valid = np.asarray(out['stream_logits']), np.asarray(present_mask(2))
  for b in range(B):
    rows = [per[s, b] for s in range(2) if valid[b, s]]
    _close(out['logits'][b], np.mean(rows, 0) if rows else np.zeros(C))
  labels = jnp.arange(B) % C
  total, count = objectives.compute(None, {**out, 'logits': out['logits']},
                                    {'label': labels})['classification']
  ce = np.asarray(jnp.stack([objectives.cross_entropy(l, labels) for l in per]))  # [S, B]
  expected = [np.mean([ce[s, b] for s in range(2) if valid[b, s]] or [0.0]) for b in range(B)]
  _close(total / count, np.mean(expected))
  assert not np.isclose(float(total / count), float(np.mean(np.asarray(
      objectives.cross_entropy(out['logits'], labels)))), atol=1e-4)  # not the mean-logit CE


def test_missing_target_with_one_way_attention_gives_a_constant_prediction():
  """Documented (docs/fusion.md): with direction='a->b' the fused vector is b's stream alone;
  an example without b pools to zeros, so its logits are the head's bias whatever `a` holds."""
  module = build('crossattn', direction='a->b')
  encoded, _ = make_encoded(2), present_mask(2)
  present = jnp.asarray([[1, 0]] * B, bool)
  variables = init(module, encoded, present)
  other = dict(encoded, a=Encoded(encoded['a'].tokens * -3.0 + 1.0, encoded['a'].mask,
                                  encoded['a'].pooled))
  first, second = (np.asarray(run(module, variables, e, present)['logits'])
                   for e in (encoded, other))
  _close(first, second)
  _close(first, np.broadcast_to(first[0], first.shape))
