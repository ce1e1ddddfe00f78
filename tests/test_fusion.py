"""Fusion registry (crossmodal.models.fusion): shapes, switches, masking, references, errors."""
import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from crossmodal.models import fusion as fusion_lib
from crossmodal.models.encoders import Encoded
from crossmodal.models.fusion import FUSIONS, build_fusion, fusion_config
from crossmodal.models.heads import MLPHead

B, D, C, HIDDEN = 4, 8, 3, (6,)
MODS = ('a', 'b', 'c')
TOKENS = {'a': 4, 'b': 3, 'c': 4}  # a, b differ in length; c reuses a's shapes (fewer compiles)
# Rows: all present / one missing / only one present / none present.
PRESENT = {1: [[1], [1], [0], [0]],
           2: [[1, 1], [1, 0], [0, 1], [0, 0]],
           3: [[1, 1, 1], [1, 0, 1], [0, 1, 0], [0, 0, 0]]}
ATTENTION_TYPES = ('crossattn', 'joint', 'bottleneck')
MIN_M = {'concat': 1, 'late': 1}

# Fields every attention fusion has (_AttentionFusionBase).
EMBEDDING_ALTERNATIVES = {
    'positional_embeddings': [False], 'sinusoidal_positions': [True],
    'scale_embeddings': [True], 'embedding_dropout': [0.3], 'dropout': [0.0],
    'pooling': ['mean'], 'mlp_ratio': [2]}
# A non-default value for every field of every type (checked to be complete below).
ALTERNATIVES = {
    'concat': {'presence_indicator': [True]},
    'late': {},
    'sum': {'project': [True]},
    'mean': {'project': [True]},
    'weighted': {'per_feature': [True], 'project': [True]},
    'product': {'project': [True]},
    'gated': {'gate': ['softmax']},
    'tensor': {'proj_dim': [3]},
    'lowrank_tensor': {'rank': [2], 'out_dim': [5]},
    'crossattn': {'direction': ['a->b', 'b->a'], 'num_layers': [1], 'num_heads': [2],
                  'kv_source': ['updated'], 'combine': ['residual', 'concat_proj_residual'],
                  'shared_norm': [True], 'self_attention_layers': [2],
                  'unimodal_layers': [1], 'modality_embeddings': [False], 'heads': ['per_stream'],
                  **EMBEDDING_ALTERNATIVES},
    'joint': {'num_layers': [1], 'num_heads': [2], 'modality_embeddings': [False],
              **EMBEDDING_ALTERNATIVES},
    'bottleneck': {'num_layers': [3], 'fusion_layer': [0, 2], 'num_bottlenecks': [2],
                   'num_heads': [2], 'heads': ['per_stream'], **EMBEDDING_ALTERNATIVES},
}


def key(seed):
  # 'rbg' keys compile far faster than threefry on CPU; the code under test is the same.
  return jax.random.key(seed, impl='rbg')


def make_encoded(m, seed=0):
  rng = np.random.default_rng(seed)
  encoded = {}
  for name in MODS[:m]:
    n = TOKENS[name]
    mask = rng.uniform(size=(B, n)) > 0.35
    mask[:, 0] = True  # every example has at least one real token
    encoded[name] = Encoded(tokens=jnp.asarray(rng.normal(size=(B, n, D)), jnp.float32),
                            mask=jnp.asarray(mask),
                            pooled=jnp.asarray(rng.normal(size=(B, D)), jnp.float32))
  return encoded


def present_mask(m):
  return jnp.asarray(PRESENT[m], bool)


def build(fusion_type, m=2, dtype=jnp.float32, **overrides):
  return build_fusion(fusion_config(fusion_type, **overrides), modalities=MODS[:m],
                      num_classes=C, head_hidden=HIDDEN, dropout=0.0, dtype=dtype)


def run(module, variables, encoded, present, train=False, seed=0, attention=False):
  return module.apply(variables, encoded, present, train=train, return_attention=attention,
                      rngs={'dropout': key(seed)})


def init(module, encoded, present, seed=0):
  return module.init(key(seed), encoded, present)


def perturb(e, rows, seed, where='all'):
  """Adds large noise to Encoded `e` in batch `rows` (all of it, or only masked tokens)."""
  rng = np.random.default_rng(1000 + seed)
  rows = np.asarray(rows)[:, None]
  tokens, mask = np.asarray(e.tokens), np.asarray(e.mask)
  noisy = tokens + 10 * rng.normal(size=tokens.shape)
  if where == 'masked':
    return Encoded(jnp.asarray(np.where((rows & ~mask)[..., None], noisy, tokens), jnp.float32),
                   e.mask, e.pooled)
  pooled = np.asarray(e.pooled)
  return Encoded(tokens=jnp.asarray(np.where(rows[..., None], noisy, tokens), jnp.float32),
                 mask=jnp.asarray(np.where(rows, rng.uniform(size=mask.shape) > 0.5, mask)),
                 pooled=jnp.asarray(np.where(rows, pooled + 10 * rng.normal(size=pooled.shape),
                                             pooled), jnp.float32))


# ----------------------------------------------------------------------------- config


def test_alternatives_table_covers_every_field_and_choice():
  assert set(ALTERNATIVES) == set(FUSIONS)
  for name, cls in FUSIONS.items():
    defaults = cls.config_defaults()
    assert set(ALTERNATIVES[name]) == set(defaults), name
    for field, values in ALTERNATIVES[name].items():
      assert defaults[field] not in values
      if field in cls.choices:
        assert set(values) | {defaults[field]} == set(cls.choices[field]), (name, field)


@pytest.mark.parametrize('fusion_type', list(FUSIONS))
def test_fusion_config_lists_exactly_the_dataclass_fields(fusion_type):
  cls = FUSIONS[fusion_type]
  own = {f.name: f.default for f in dataclasses.fields(cls)
         if f.name not in {g.name for g in dataclasses.fields(fusion_lib._FusionBase)}}
  cfg = fusion_config(fusion_type)
  assert cfg.to_dict() == {'type': fusion_type, **own}
  module = build_fusion(cfg, modalities=MODS[:2], num_classes=C)
  assert {k: getattr(module, k) for k in own} == own


def test_overrides_reach_the_module():
  cfg = fusion_config('crossattn', direction='a->b', num_layers=3, dropout=0.0)
  module = build_fusion(cfg, modalities=('image', 'audio'), num_classes=7, head_hidden=(5,),
                        dropout=0.2)
  assert (module.direction, module.num_layers, module.dropout) == ('a->b', 3, 0.0)
  assert (module.num_classes, module.head_hidden, module.head_dropout) == (7, (5,), 0.2)


def test_unknown_type_lists_choices():
  with pytest.raises(ValueError) as err:
    fusion_config('attention')
  for name in FUSIONS:
    assert repr(name) in str(err.value)
  with pytest.raises(ValueError, match='valid choices'):
    build_fusion({'type': 'nope'}, modalities=MODS[:2], num_classes=C)
  with pytest.raises(ValueError, match='has no type'):
    build_fusion({'num_layers': 2}, modalities=MODS[:2], num_classes=C)


def test_switch_of_another_type_is_rejected_with_valid_fields():
  with pytest.raises(ValueError) as err:
    fusion_config('joint', direction='a->b')
  assert "'direction'" in str(err.value) and 'num_layers' in str(err.value)
  with pytest.raises(ValueError, match=r"config.model.fusion: unknown option\(s\) \['project'\]; "
                     r"valid options: \['presence_indicator'\]"):
    build_fusion({'type': 'concat', 'project': True}, modalities=MODS[:2], num_classes=C)
  with pytest.raises(ValueError, match='valid options: \\[\\]'):
    fusion_config('late', presence_indicator=True)


@pytest.mark.parametrize('fusion_type,overrides,match', [
    ('crossattn', {'direction': 'up'}, r"valid choices: \('a->b', 'b->a', 'both'\)"),
    ('crossattn', {'kv_source': 'last'}, r"valid choices: \('first_layer', 'updated'\)"),
    ('crossattn', {'combine': 'sum'},
     r"valid choices: \('residual', 'concat_proj', 'concat_proj_residual'\)"),
    ('joint', {'pooling': 'max'}, r"valid choices: \('cls', 'mean'\)"),
    ('gated', {'gate': 'relu'}, r"valid choices: \('sigmoid', 'softmax'\)"),
    ('joint', {'num_layers': '2'}, 'must be of type int'),
    ('joint', {'num_heads': 0}, 'config.model.fusion.num_heads=0: must be an int >= 1'),
    ('bottleneck', {'dropout': 1.0}, r'dropout=1.0: must be in \[0, 1\)'),
    ('bottleneck', {'fusion_layer': 3}, r'fusion_layer=3 must be in \[0, num_layers=2\]'),
    ('crossattn', {'self_attention_layers': 0}, 'needs self_attention_layers >= 1'),
    ('lowrank_tensor', {'rank': 0}, 'rank=0: must be an int >= 1'),
    # Switches that would be accepted and silently have no effect:
    ('crossattn', {'kv_source': 'updated', 'num_layers': 1}, 'set num_layers >= 2'),
    ('bottleneck', {'fusion_layer': 2, 'num_bottlenecks': 8}, 'num_bottlenecks=8 has no effect'),
])
def test_bad_switch_values_name_field_and_choices(fusion_type, overrides, match):
  with pytest.raises(ValueError, match=match):
    fusion_config(fusion_type, **overrides)


def test_modality_count_limits_are_explicit():
  with pytest.raises(ValueError, match="direction='a->b' is defined for exactly 2 modalities"):
    build_fusion(fusion_config('crossattn', direction='a->b'), modalities=MODS, num_classes=C)
  with pytest.raises(ValueError, match="lower proj_dim or use 'lowrank_tensor'"):
    build_fusion(fusion_config('tensor', proj_dim=40), modalities=MODS, num_classes=C)
  for name in FUSIONS:
    if name in MIN_M:
      build_fusion(fusion_config(name), modalities=MODS[:1], num_classes=C)
    else:
      with pytest.raises(ValueError, match='needs at least 2'):
        build_fusion(fusion_config(name), modalities=MODS[:1], num_classes=C)
  with pytest.raises(ValueError, match='duplicates'):
    build_fusion(fusion_config('sum'), modalities=('a', 'a'), num_classes=C)


def test_bad_inputs_are_reported():
  module, encoded = build('sum'), make_encoded(2)
  with pytest.raises(ValueError, match=r'present must have shape \[B, M\] = \(4, 2\)'):
    init(module, encoded, jnp.ones((B, 3), bool))
  with pytest.raises(ValueError, match=r"encoded has no \['b'\]"):
    init(module, {'a': encoded['a']}, present_mask(2))


# ----------------------------------------------------------------------------- shapes


def _expected_fused_dim(name, m, cfg):
  return {'concat': m * D, 'late': None, 'tensor': (cfg.get('proj_dim', 8) + 1) ** m,
          'lowrank_tensor': 32,
          'crossattn': (m if cfg.get('direction', 'both') == 'both' else 1) * D}.get(name, D)


SHAPE_CASES = [(name, m) for name in FUSIONS for m in (1, 2, 3) if m >= MIN_M.get(name, 2)]


@pytest.mark.parametrize('fusion_type,m', SHAPE_CASES)
def test_output_shapes(fusion_type, m):
  module, encoded, present = build(fusion_type, m), make_encoded(m), present_mask(m)
  variables = init(module, encoded, present)
  out = run(module, variables, encoded, present, attention=True)
  assert out['logits'].shape == (B, C) and out['logits'].dtype == jnp.float32
  assert np.isfinite(out['logits']).all()  # also for the example with no modality at all
  dim = _expected_fused_dim(fusion_type, m, {})
  assert (out['fused'] is None) if dim is None else out['fused'].shape == (B, dim)
  assert isinstance(out['attention'], dict)
  assert bool(out['attention']) == (fusion_type in ATTENTION_TYPES)
  assert 'attention' not in run(module, variables, encoded, present)


def test_concat_presence_indicator_and_crossattn_direction_shapes():
  encoded, present = make_encoded(3), present_mask(3)
  module = build('concat', 3, presence_indicator=True)
  out = run(module, init(module, encoded, present), encoded, present)
  np.testing.assert_array_equal(out['fused'][:, -3:], present.astype(jnp.float32))
  encoded, present = make_encoded(2), present_mask(2)
  module = build('crossattn', 2, direction='b->a')
  out = run(module, init(module, encoded, present), encoded, present, attention=True)
  assert out['fused'].shape == (B, D)
  assert {k.split('/')[1] for k in out['attention'] if k.startswith('cross')} == {'b->a'}


# ----------------------------------------------------------------------------- no dead options


# Switches whose effect is invisible at initialisation: zero-initialised modality logits give
# equal weights whether they are per modality or per feature; LayerNorms start as the
# identity affine map, shared or not (test_shared_norm_is_one_layernorm_for_queries_and_keys);
# only the parameters differ.
PARAMS_ONLY = {('weighted', 'per_feature'), ('crossattn', 'shared_norm')}


@pytest.mark.parametrize('fusion_type', [n for n in FUSIONS if ALTERNATIVES[n]])
def test_every_switch_changes_the_output(fusion_type):
  """No dead options: each non-default value changes the logits (in eval mode, or in train
  mode with the same dropout rng for dropout switches)."""
  encoded, present = make_encoded(2), present_mask(2)

  def outputs(module):
    variables = init(module, encoded, present)
    shapes = jax.tree.map(lambda x: x.shape, variables)
    train = lambda: run(module, variables, encoded, present, train=True, seed=1)['logits']
    return shapes, run(module, variables, encoded, present)['logits'], train

  base_shapes, base_eval, base_train = outputs(build(fusion_type))
  for field, values in ALTERNATIVES[fusion_type].items():
    for value in values:
      shapes, logits, train = outputs(build(fusion_type, **{field: value}))
      if (fusion_type, field) in PARAMS_ONLY:
        assert shapes != base_shapes
        continue
      differs = not np.allclose(logits, base_eval, atol=1e-6)
      if field in ('dropout', 'embedding_dropout'):
        differs = not np.allclose(train(), base_train(), atol=1e-6)
      assert differs, f'{fusion_type}.{field}={value!r} does not change the output'


# ----------------------------------------------------------------------------- missing modalities

MISSING_CASES = ([(name, {}, 3) for name in FUSIONS] + [
    ('concat', {'presence_indicator': True}, 3),
    ('weighted', {'per_feature': True, 'project': True}, 3),
    ('gated', {'gate': 'softmax'}, 3),
    ('product', {'project': True}, 2),
    ('crossattn', {'direction': 'a->b', 'kv_source': 'updated'}, 2),
    ('crossattn', {'direction': 'b->a', 'combine': 'residual', 'pooling': 'mean',
                   'self_attention_layers': 0}, 2),
    ('crossattn', {'kv_source': 'updated', 'pooling': 'mean'}, 3),
    ('crossattn', {'unimodal_layers': 2}, 3),
    ('joint', {'pooling': 'mean'}, 3),
    ('bottleneck', {'fusion_layer': 0, 'pooling': 'mean'}, 3),
    ('bottleneck', {'fusion_layer': 2}, 3),
])


@pytest.mark.parametrize('fusion_type,overrides,m', MISSING_CASES)
def test_missing_modality_inputs_do_not_affect_output(fusion_type, overrides, m):
  module, encoded, present = build(fusion_type, m, **overrides), make_encoded(m), present_mask(m)
  variables = init(module, encoded, present)
  base = run(module, variables, encoded, present)
  # Perturb every modality wherever it is missing: nothing may change.
  hidden = run(module, variables, {name: perturb(e, ~present[:, j], j)
                                   for j, (name, e) in enumerate(encoded.items())}, present)
  np.testing.assert_allclose(hidden['logits'], base['logits'], atol=1e-5,
                             err_msg=f'{fusion_type}: a missing modality leaked')
  if base['fused'] is not None:
    np.testing.assert_allclose(hidden['fused'], base['fused'], atol=1e-5)
  # The same change where a modality is present must matter (so the check can fail).
  # A one-directional crossattn has no output without its target (b for 'a->b').
  target = {'a->b': 1, 'b->a': 0}.get(overrides.get('direction'))
  for j, name in enumerate(MODS[:m]):
    used = present[:, j] if target is None else present[:, j] & present[:, target]
    shown = run(module, variables, {**encoded, name: perturb(encoded[name], present[:, j], j)},
                present)
    changed = ~np.isclose(shown['logits'], base['logits'], atol=1e-4).all(axis=1)
    np.testing.assert_array_equal(changed, used, err_msg=f'{fusion_type}: {name!r} unused')


@pytest.mark.parametrize('fusion_type,overrides', [
    ('crossattn', {}), ('crossattn', {'direction': 'a->b', 'kv_source': 'updated'}),
    ('joint', {'pooling': 'mean'}), ('bottleneck', {'fusion_layer': 0})])
def test_masked_tokens_are_hidden(fusion_type, overrides):
  module, encoded, present = build(fusion_type, 2, **overrides), make_encoded(2), present_mask(2)
  variables = init(module, encoded, present)
  base = run(module, variables, encoded, present)['logits']
  noisy = {k: perturb(e, jnp.ones(B, bool), 7, where='masked') for k, e in encoded.items()}
  np.testing.assert_allclose(run(module, variables, noisy, present)['logits'], base, atol=1e-5)


# ----------------------------------------------------------------------------- attention maps


def _check_rows(w, query_valid, key_valid):
  """Rows of valid queries with a valid key sum to 1 over valid keys; all else is 0."""
  w = np.asarray(w)
  q, k = np.asarray(query_valid), np.asarray(key_valid)
  assert w.shape[0] == B and w.shape[2:] == (q.shape[1], k.shape[1])
  expect = (q & k.any(1, keepdims=True))[:, None, :]
  np.testing.assert_allclose(w.sum(-1), np.broadcast_to(expect, w.shape[:3]), atol=1e-5)
  assert np.all(w[np.broadcast_to(~k[:, None, None, :], w.shape)] == 0)
  assert expect.any()


def test_attention_weights_respect_masks():
  encoded, present = make_encoded(2), present_mask(2)
  valid = {n: e.mask & present[:, i, None] for i, (n, e) in enumerate(encoded.items())}
  with_cls = {n: jnp.concatenate([present[:, i, None], valid[n]], 1)
              for i, n in enumerate(encoded)}
  # joint: [class token; a tokens; b tokens]
  module = build('joint')
  out = run(module, init(module, encoded, present), encoded, present, attention=True)
  joint_valid = jnp.concatenate([jnp.ones((B, 1), bool), valid['a'], valid['b']], 1)
  assert len(out['attention']) == 2
  for w in out['attention'].values():
    assert w.shape[1] == 4
    _check_rows(w, joint_valid, joint_valid)
  # crossattn: queries [class token; target tokens], keys = source tokens
  module = build('crossattn')
  out = run(module, init(module, encoded, present), encoded, present, attention=True)
  for key, w in out['attention'].items():
    if key.startswith('cross'):
      src, tgt = key.split('/')[1].split('->')
      _check_rows(w, with_cls[tgt], valid[src])
    else:
      tgt = key.split('/')[1]
      _check_rows(w, with_cls[tgt], with_cls[tgt])
  # crossattn's unimodal layers: one modality's tokens on both sides, no class token
  module = build('crossattn', unimodal_layers=1)
  out = run(module, init(module, encoded, present), encoded, present, attention=True)
  for m in encoded:
    _check_rows(out['attention'][f'unimodal_0/{m}'], valid[m], valid[m])
  # bottleneck (fused layers): [class token; tokens; bottlenecks (always valid)]
  module = build('bottleneck', fusion_layer=0, num_bottlenecks=2)
  out = run(module, init(module, encoded, present), encoded, present, attention=True)
  for key, w in out['attention'].items():
    m = key.split('/')[1]
    full = jnp.concatenate([with_cls[m], jnp.ones((B, 2), bool)], 1)
    _check_rows(w, full, full)


def test_unimodal_layers_mix_one_modality_before_the_cross_layers():
  """unimodal_layers: each modality's tokens attend only to their own before any cross layer,
  so changing b's tokens leaves a's unimodal attention as it was and changes the output."""
  encoded, present = make_encoded(2), present_mask(2)
  module = build('crossattn', unimodal_layers=1)
  variables = init(module, encoded, present)
  assert {'unimodal_0_a', 'unimodal_0_b'} <= set(variables['params'])
  base = run(module, variables, encoded, present, attention=True)
  other = {**encoded, 'b': perturb(encoded['b'], jnp.ones(B, bool), 3)}
  moved = run(module, variables, other, present, attention=True)
  np.testing.assert_array_equal(moved['attention']['unimodal_0/a'],
                                base['attention']['unimodal_0/a'])
  assert not np.allclose(moved['attention']['unimodal_0/b'], base['attention']['unimodal_0/b'])
  assert not np.allclose(moved['logits'], base['logits'])


# ----------------------------------------------------------------------------- references


def _np(x):
  return np.asarray(x, np.float64)


def test_late_is_the_average_of_unimodal_heads_over_present_modalities():
  encoded, present = make_encoded(3), present_mask(3)
  module = build('late', 3)
  variables = init(module, encoded, present)
  out = run(module, variables, encoded, present)
  head = MLPHead(hidden=HIDDEN, num_classes=C)
  per = np.stack([_np(head.apply({'params': variables['params'][f'head_{m}']}, encoded[m].pooled))
                  for m in MODS])  # [M, B, C]
  p = _np(present).T[..., None]
  expected = (per * p).sum(0) / np.maximum(p.sum(0), 1)
  np.testing.assert_allclose(out['logits'], expected, atol=1e-5)
  assert np.all(np.asarray(out['logits'])[3] == 0)  # nothing present


@pytest.mark.parametrize('fusion_type', ['concat', 'sum', 'mean', 'product'])
def test_parameter_free_fusions_match_numpy(fusion_type):
  encoded, present = make_encoded(3), present_mask(3)
  module = build(fusion_type, 3)
  out = run(module, init(module, encoded, present), encoded, present)
  x = np.stack([_np(encoded[m].pooled) for m in MODS], 1)  # [B, M, D]
  p = _np(present)[:, :, None]
  expected = {'concat': (x * p).reshape(B, -1), 'sum': (x * p).sum(1),
              'mean': (x * p).sum(1) / np.maximum(p.sum(1), 1),
              'product': np.where(p > 0, x, 1).prod(1)}[fusion_type]
  np.testing.assert_allclose(out['fused'], expected, atol=1e-5)


@pytest.mark.parametrize('per_feature', [False, True])
def test_weighted_softmax_renormalises_over_present_modalities(per_feature):
  encoded, present = make_encoded(3), present_mask(3)
  module = build('weighted', 3, per_feature=per_feature)
  variables = init(module, encoded, present)
  shape = variables['params']['modality_logits'].shape
  assert shape == ((3, D) if per_feature else (3, 1))
  logits = jnp.asarray(np.random.default_rng(9).normal(size=shape), jnp.float32)
  variables = {'params': {**variables['params'], 'modality_logits': logits}}
  out = run(module, variables, encoded, present)
  x = np.stack([_np(encoded[m].pooled) for m in MODS], 1)
  p = _np(present)[:, :, None] > 0
  e = np.where(p, np.exp(np.broadcast_to(_np(logits), x.shape)), 0)
  w = e / np.maximum(e.sum(1, keepdims=True), 1e-30)
  np.testing.assert_allclose(out['fused'], (w * x).sum(1), atol=1e-5)


@pytest.mark.parametrize('gate', ['sigmoid', 'softmax'])
def test_gated_matches_gmu_formula(gate):
  encoded, present = make_encoded(2), present_mask(2)
  module = build('gated', 2, gate=gate)
  variables = init(module, encoded, present)
  out = run(module, variables, encoded, present)
  prm = jax.tree.map(_np, variables['params'])
  p = _np(present) > 0
  x = [np.where(p[:, i, None], _np(encoded[m].pooled), 0) for i, m in enumerate(MODS[:2])]
  h = [np.tanh(x[i] @ prm[f'hidden_{m}']['kernel'] + prm[f'hidden_{m}']['bias'])
       for i, m in enumerate(MODS[:2])]
  g = (np.concatenate(x, 1) @ prm['gates']['kernel'] + prm['gates']['bias']).reshape(B, 2, D)
  if gate == 'sigmoid':
    z = 1 / (1 + np.exp(-g)) * p[:, :, None]
  else:  # GMU's z, 1 - z when both are present
    z1 = 1 / (1 + np.exp(-(g[:, 0] - g[:, 1])))
    z = np.stack([z1, 1 - z1], 1)
    z = np.where(p[:, :, None].all(1, keepdims=True), z, p[:, :, None] * 1.0)
  expected = z[:, 0] * h[0] + z[:, 1] * h[1]
  np.testing.assert_allclose(out['fused'], expected, atol=1e-5)


def _z_with_one(variables, encoded, present, proj):
  """[z_m; 1] per modality, z_m = 0 for a missing modality, in numpy."""
  prm = jax.tree.map(_np, variables['params'])
  zs = []
  for i, m in enumerate(encoded):
    z = _np(encoded[m].pooled)
    if proj:
      z = z @ prm[f'proj_{m}']['kernel'] + prm[f'proj_{m}']['bias']
    z = np.where(_np(present)[:, i, None] > 0, z, 0)
    zs.append(np.concatenate([z, np.ones((B, 1))], 1))
  return zs


def test_tensor_fusion_matches_numpy_outer_product():
  encoded, present = make_encoded(3), present_mask(3)
  module = build('tensor', 3, proj_dim=3)
  variables = init(module, encoded, present)
  out = run(module, variables, encoded, present)
  z1, z2, z3 = _z_with_one(variables, encoded, present, proj=True)
  expected = np.einsum('bi,bj,bk->bijk', z1, z2, z3).reshape(B, -1)
  assert out['fused'].shape == (B, 4 ** 3)
  np.testing.assert_allclose(out['fused'], expected, atol=1e-5)
  # Missing modality -> [0..0, 1]: row 1 (b missing) keeps only terms without b's features.
  t = np.asarray(out['fused']).reshape(B, 4, 4, 4)
  assert np.all(t[1, :, :3, :] == 0) and np.abs(t[1, :, 3, :]).sum() > 0
  np.testing.assert_allclose(t[3].ravel(), np.eye(64)[-1], atol=1e-6)  # nothing present: 1


def test_lowrank_tensor_matches_numpy_and_equals_tfn_with_factorised_weights():
  encoded, present = make_encoded(3), present_mask(3)
  module = build('lowrank_tensor', 3, rank=2, out_dim=5)
  variables = init(module, encoded, present)
  out = run(module, variables, encoded, present)
  prm = jax.tree.map(_np, variables['params'])
  zs = _z_with_one(variables, encoded, present, proj=False)
  fs = [np.einsum('bi,rio->rbo', z, prm[f'factor_{m}']) for z, m in zip(zs, MODS)]
  expected = np.einsum('r,rbo->bo', prm['rank_weights'], fs[0] * fs[1] * fs[2]) + prm['bias']
  np.testing.assert_allclose(out['fused'], expected, atol=1e-5)
  # The same output from the full TFN weight tensor W = sum_r w_r (x)_m W_m^(r).
  w_full = np.einsum('r,rio,rjo,rko->ijko', prm['rank_weights'], prm['factor_a'],
                     prm['factor_b'], prm['factor_c'])
  tfn = np.einsum('bi,bj,bk,ijko->bo', *zs, w_full) + prm['bias']
  np.testing.assert_allclose(out['fused'], tfn, atol=1e-4)


# ----------------------------------------------------------------------------- determinism, dtype


def test_init_and_apply_are_deterministic_given_rngs():
  encoded, present = make_encoded(2), present_mask(2)
  module = build('crossattn')
  v1, v2 = init(module, encoded, present, seed=3), init(module, encoded, present, seed=3)
  assert jax.tree.all(jax.tree.map(lambda a, b: bool((a == b).all()), v1, v2))
  v3 = init(module, encoded, present, seed=4)
  assert not np.allclose(v1['params']['head']['logits']['kernel'],
                         v3['params']['head']['logits']['kernel'])
  a = run(module, v1, encoded, present, train=True, seed=5)['logits']
  np.testing.assert_array_equal(a, run(module, v1, encoded, present, train=True, seed=5)['logits'])
  assert not np.allclose(a, run(module, v1, encoded, present, train=True, seed=6)['logits'])
  np.testing.assert_array_equal(run(module, v1, encoded, present)['logits'],
                                run(module, v1, encoded, present, seed=6)['logits'])


@pytest.mark.parametrize('fusion_type', ['joint', 'tensor'])
def test_bfloat16_compute_with_float32_params_under_jit(fusion_type):
  encoded, present = make_encoded(2), present_mask(2)
  low = build(fusion_type, dtype=jnp.bfloat16)
  variables = init(low, encoded, present)
  assert all(x.dtype == jnp.float32 for x in jax.tree.leaves(variables))
  apply = jax.jit(lambda v, e, p: low.apply(v, e, p)['logits'])
  logits = apply(variables, encoded, present)
  ref = run(build(fusion_type), variables, encoded, present)['logits']
  assert logits.dtype == jnp.float32 and np.isfinite(logits).all()
  np.testing.assert_allclose(logits, ref, atol=0.1, rtol=0.1)


@pytest.mark.parametrize('fusion_type,overrides', [
    ('crossattn', {}), ('crossattn', {'direction': 'a->b', 'kv_source': 'updated'}),
    ('crossattn', {'direction': 'b->a', 'kv_source': 'updated', 'num_layers': 3}),
    ('joint', {}), ('bottleneck', {}), ('bottleneck', {'fusion_layer': 2}),
    ('lowrank_tensor', {}), ('gated', {'gate': 'softmax'}), ('weighted', {'project': True})])
def test_every_parameter_gets_a_gradient(fusion_type, overrides):
  """No parameter is created and then left out of the computation (it would count in
  parameter totals of an ablation without doing anything)."""
  module, encoded = build(fusion_type, 2, **overrides), make_encoded(2)
  present = jnp.ones((B, 2), bool)
  variables = init(module, encoded, present)

  def loss(params):
    return jnp.sum(run(module, {**variables, 'params': params}, encoded, present)['logits'] ** 2)

  grads = jax.grad(loss)(variables['params'])
  dead = [jax.tree_util.keystr(path) for path, g in jax.tree_util.tree_leaves_with_path(grads)
          if not np.any(np.asarray(g))]
  assert not dead, f'{fusion_type} {overrides}: parameters without gradient: {dead}'
