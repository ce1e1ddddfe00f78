"""The full model: encoders x fusions, present-mask plumbing, embeddings, precision, counts."""
import itertools
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from crossmodal import config_utils
from crossmodal.models import encoders as E
from crossmodal.models import fusion as F
from crossmodal.models import model as M
from crossmodal.models import text as T
from conftest import REPO, TINY_ENCODERS

DIM, C, B = 8, 5, 2
TINY = TINY_ENCODERS  # tests/conftest.py
SHAPES = {'image': ((B, 16, 16, 1), jnp.uint8), 'audio': ((B, 1600), jnp.float32),
          'text': ((B, 12), jnp.int32)}


pytestmark = pytest.mark.usefixtures('fast_prng')  # tests/conftest.py


def _config(types, fusion='concat', **fusion_overrides):
  """Tiny config.model for {modality: encoder type}."""
  cfg = M.default_model_config(tuple(types), fusion, dim=DIM)
  for m, kind in types.items():
    cfg.encoders[m] = E.encoder_config(m, kind, **TINY[m, kind])
  cfg.fusion = F.fusion_config(fusion, **fusion_overrides)
  return cfg


def _batch(seed=0):
  rs = np.random.RandomState(seed)
  return {'image': jnp.asarray(rs.randint(0, 256, SHAPES['image'][0]), jnp.uint8),
          'audio': jnp.asarray(0.3 * rs.randn(*SHAPES['audio'][0]), jnp.float32),
          'text': jnp.asarray(T.encode(['a red apple', 'sun'], 12)),
          'label': jnp.zeros((B,), jnp.int32)}


def _abstract_batch(modalities):
  return {m: jax.ShapeDtypeStruct(*SHAPES[m]) for m in modalities}


def _check_output_shapes(model, modalities):
  out, variables = jax.eval_shape(
      lambda b: model.init_with_output(jax.random.PRNGKey(0), b, return_attention=True),
      _abstract_batch(modalities))
  assert out['logits'].shape == (B, C) and out['logits'].dtype == jnp.float32
  # Conv encoders under an attention fusion compute no pooled vector (nothing reads it).
  pooled = [m for m in modalities if not (F.uses_tokens(model.fusion.type)
                                          and model.encoders[m].type in ('lenet', 'cnn'))]
  assert {m: e.shape for m, e in out['embeddings'].items()} == {m: (B, DIM) for m in pooled}
  assert isinstance(out['attention'], dict)
  for name, w in out['attention'].items():
    assert w.ndim == 4 and w.shape[0] == B, name
  assert set(variables['params']) == {f'{m}_encoder' for m in modalities} | {'fusion'}


# ------------------------------------------------------------------ every combination


@pytest.mark.parametrize('fusion', sorted(F.FUSIONS))
def test_every_encoder_pair_with_every_fusion_has_the_contract_shapes(fusion):
  """Abstract (jax.eval_shape) init + apply: builds and traces every combination cheaply."""
  pairs = [dict(image=i, audio=a) for i, a in itertools.product(E.ENCODERS['image'],
                                                                E.ENCODERS['audio'])]
  pairs += [dict(image=i, text='transformer') for i in E.ENCODERS['image']]
  pairs += [dict(audio=a, text='transformer') for a in E.ENCODERS['audio']]
  pairs += [dict(image='lenet', audio='ast', text='transformer')]  # three modalities
  for types in pairs:
    _check_output_shapes(M.build_model(_config(types, fusion), C), tuple(types))


# ------------------------------------------------------------------ present plumbing


@pytest.mark.parametrize('fusion', ['mean', 'crossattn'])
def test_present_mask_reaches_the_fusion_in_modality_order(fusion):
  model = M.build_model(_config(dict(image='lenet', audio='lenet'), fusion), C)
  batch = _batch()
  variables = model.init(jax.random.PRNGKey(0), batch)
  # Example 0 has only the image, example 1 only the audio.
  present = jnp.asarray([[True, False], [False, True]])
  out = model.apply(variables, batch, present=present, return_attention=True)
  base = out['logits']
  assert np.isfinite(np.asarray(base)).all()
  if fusion == 'crossattn':
    assert out['attention'], 'crossattn returns its attention weights when asked'
  assert 'attention' not in model.apply(variables, batch, present=present)
  other = _batch(seed=1)
  new_audio = model.apply(variables, {**batch, 'audio': other['audio']}, present=present)
  new_image = model.apply(variables, {**batch, 'image': other['image']}, present=present)
  # An absent modality's input has no effect; a present one's does.
  np.testing.assert_allclose(new_audio['logits'][0], base[0], rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(new_image['logits'][1], base[1], rtol=1e-5, atol=1e-6)
  assert not np.allclose(new_audio['logits'][1], base[1])
  assert not np.allclose(new_image['logits'][0], base[0])
  # Omitting `present` means every modality is present.
  everything = model.apply(variables, batch, present=jnp.ones((B, 2), bool))['logits']
  np.testing.assert_array_equal(model.apply(variables, batch)['logits'], everything)
  assert not np.allclose(everything, base)


def test_present_and_batch_errors():
  model = M.build_model(_config(dict(image='lenet', audio='lenet')), C)
  batch = _batch()
  with pytest.raises(ValueError, match=r"present must be bool \[B, M\] = \(2, 2\)"):
    jax.eval_shape(lambda b: model.init(jax.random.PRNGKey(0), b, jnp.ones((B, 3), bool)),
                   batch)
  with pytest.raises(ValueError, match=r"batch lacks modalities \['audio'\]"):
    jax.eval_shape(lambda b: model.init(jax.random.PRNGKey(0), b), {'image': batch['image']})


# ------------------------------------------------------------------ embeddings, train mode


def test_embeddings_are_the_encoders_pooled_outputs():
  cfg = _config(dict(image='lenet', text='transformer'))
  model = M.build_model(cfg, C)
  batch = _batch()
  variables = model.init(jax.random.PRNGKey(0), batch)
  out = model.apply(variables, batch)
  for m in ('image', 'text'):
    tokens = F.uses_tokens(cfg.fusion.type)
    enc = E.build_encoder(m, cfg.encoders[m], DIM, with_tokens=tokens,
                          with_pooled=not tokens)  # as the model builds it
    sub = {col: tree[f'{m}_encoder'] for col, tree in variables.items()
           if f'{m}_encoder' in tree}
    np.testing.assert_allclose(out['embeddings'][m], enc.apply(sub, batch[m]).pooled,
                               rtol=1e-6, atol=1e-6)


def test_training_mode_updates_batch_stats_and_uses_dropout_rng():
  cfg = _config(dict(image='lenet', audio='lenet'))
  cfg.dropout = 0.5  # the head's dropout
  model = M.build_model(cfg, C)
  batch = _batch()
  variables = model.init(jax.random.PRNGKey(0), batch)
  run = lambda seed: model.apply(variables, batch, train=True, mutable=['batch_stats'],
                                 rngs={'dropout': jax.random.PRNGKey(seed)})
  (a, state), (b, _), (c, _) = run(1), run(1), run(2)
  np.testing.assert_array_equal(a['logits'], b['logits'])
  assert not np.allclose(a['logits'], c['logits'])
  old = variables['batch_stats']['image_encoder']['norm_0']['mean']
  assert not np.allclose(state['batch_stats']['image_encoder']['norm_0']['mean'], old)
  e1, e2 = model.apply(variables, batch), model.apply(variables, batch)
  np.testing.assert_array_equal(e1['logits'], e2['logits'])  # no dropout in eval


def test_bfloat16_model_keeps_float32_params_and_outputs():
  cfg = _config(dict(image='lenet', audio='lenet'))
  batch = _batch()
  m32, m16 = M.build_model(cfg, C), M.build_model(cfg, C, dtype='bfloat16')
  v16 = m16.init(jax.random.PRNGKey(0), batch)
  assert {x.dtype for x in jax.tree.leaves(v16)} == {jnp.dtype(jnp.float32)}
  o16, o32 = m16.apply(v16, batch), m32.apply(v16, batch)
  assert o16['logits'].dtype == jnp.float32
  assert all(e.dtype == jnp.float32 for e in o16['embeddings'].values())
  scale = np.abs(np.asarray(o32['logits'])).max()
  np.testing.assert_allclose(o16['logits'], o32['logits'], atol=0.05 * scale + 0.02)


# ------------------------------------------------------------------ building and configs


def test_default_model_config_layout():
  cfg = M.default_model_config()
  assert set(cfg) == {'modalities', 'dim', 'encoders', 'fusion', 'head', 'dropout', 'attention',
                      'remat'}
  assert cfg.modalities == ('image', 'audio') and cfg.fusion.type == 'concat'
  assert (cfg.encoders.image.type, cfg.encoders.audio.type) == ('lenet', 'lenet')
  assert cfg.head == (100,)  # MultiBench's AV-MNIST MLP head width
  text = M.default_model_config(('image', 'text'), 'joint', encoders={'image': 'vit'})
  assert (text.encoders.image.type, text.encoders.text.type) == ('vit', 'transformer')
  assert text.fusion.type == 'joint'


def test_build_model_rejects_bad_configs():
  cfg = _config(dict(image='lenet', audio='lenet'))
  bad = cfg.copy_and_resolve_references()
  bad.modalities = ('image', 'video')
  with pytest.raises(ValueError, match=r"config.model.modalities=\('image', 'video'\): valid "
                     r"choices: \('image', 'audio', 'text'\)"):
    M.build_model(bad, C)
  bad = cfg.copy_and_resolve_references()
  bad.modalities = ('image', 'audio', 'text')
  with pytest.raises(ValueError, match=r"encoders lacks 'text'"):
    M.build_model(bad, C)
  bad = cfg.to_dict()
  bad['heads'] = (10,)
  with pytest.raises(ValueError, match=r"unknown option\(s\) \['heads'\].*'head'"):
    M.build_model(bad, C)
  with pytest.raises(ValueError, match=r"dtype 'fp8'.*bfloat16"):
    M.build_model(cfg, C, dtype='fp8')
  bad = cfg.to_dict()
  bad['fusion'] = {'type': 'attention'}
  with pytest.raises(ValueError, match=r"fusion.type='attention': valid choices: .*'crossattn'"):
    M.build_model(bad, C)
  bad = cfg.to_dict()
  bad['encoders']['image']['patch_size'] = 4
  with pytest.raises(ValueError, match=r"\['patch_size'\]; valid options"):
    M.build_model(bad, C)


def test_head_config_builds_the_mlp_head():
  cfg = _config(dict(image='lenet', audio='lenet'))
  cfg.head = (7, 6)
  model = M.build_model(cfg, C)
  _, variables = jax.eval_shape(
      lambda b: model.init_with_output(jax.random.PRNGKey(0), b), _abstract_batch(('image',
                                                                                   'audio')))
  head = jax.tree.map(lambda x: x.shape, variables['params']['fusion']['head'])
  assert head == {'hidden_0': {'kernel': (2 * DIM, 7), 'bias': (7,)},
                  'hidden_1': {'kernel': (7, 6), 'bias': (6,)},
                  'logits': {'kernel': (6, C), 'bias': (C,)}}


# ------------------------------------------------------------------ parameter counts


def test_count_params_counts_every_trainable_parameter():
  cfg = M.default_model_config(('image',), 'concat', dim=DIM, head=())
  cfg.encoders.image = E.encoder_config('image', 'lenet', base_channels=2, extra_layers=0)
  model = M.build_model(cfg, C)
  variables = model.init(jax.random.PRNGKey(0), {'image': jnp.zeros((1, 4, 4, 1), jnp.uint8)})
  # By hand: conv 5x5x1x2 (no bias), BatchNorm scale+bias 2+2, pool_proj flattens the 2x2x2
  # map (8 -> D; no token_proj: concat reads only pooled vectors); concat of one modality,
  # linear head D -> C.
  encoder = 5 * 5 * 2 + 4 + (8 * DIM + DIM)
  assert M.param_counts_by_part(variables) == {'image_encoder': encoder,
                                               'fusion': DIM * C + C}
  assert M.count_params(variables) == encoder + DIM * C + C
  assert M.count_params(variables['params']) == M.count_params(variables)
  abstract = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                            {'image': jax.ShapeDtypeStruct((1, 4, 4, 1), jnp.uint8)})
  assert M.count_params(abstract) == M.count_params(variables)


def test_param_count_script_prints_a_table():
  path = os.path.join(REPO, 'scripts', 'param_count.py')
  script = config_utils.load_module(path, 'param_count')
  rows = script.param_table(modalities=('image', 'audio'), dim=DIM, num_classes=C,
                            fusions=('concat', 'late'))
  assert len(rows) == 2 * len(E.ENCODERS['image']) * len(E.ENCODERS['audio'])
  row = next(r for r in rows if r['encoders'] == {'image': 'lenet', 'audio': 'lenet'}
             and r['fusion'] == 'late')
  model = M.build_model(M.default_model_config(('image', 'audio'), 'late', dim=DIM), C)
  variables = jax.eval_shape(model.init, jax.random.PRNGKey(0),
                             script.sample_batch(('image', 'audio')))
  assert row['total'] == M.count_params(variables)
  assert row['parts'] == M.param_counts_by_part(variables)
  text = script.format_table(rows)
  assert 'late' in text and f'{row["total"]:,}' in text


@pytest.mark.parametrize('fusion, token_stage', [
    ('concat', -1), ('late', -1), ('tensor', -1), ('crossattn', -1), ('joint', -1),
    ('crossattn', 0), ('bottleneck', 0)])
def test_every_model_parameter_reaches_the_logits(fusion, token_stage):
  """No parameter is created and left without effect on the logits (it would inflate the
  counts an ablation reports): conv encoders build their token projection only for attention
  fusions, and under those stop at the token stage with no pooled projection."""
  cfg = _config(dict(image='lenet', audio='lenet'), fusion)
  for m in ('image', 'audio'):
    cfg.encoders[m].token_stage = token_stage
  model = M.build_model(cfg, C)
  batch = _batch()
  variables = jax.jit(model.init)(jax.random.PRNGKey(0), batch)

  def loss(params):
    out, _ = model.apply({**variables, 'params': params}, batch, train=True,
                         rngs={'dropout': jax.random.PRNGKey(1)}, mutable=['batch_stats'])
    return jnp.sum(out['logits'] ** 2)

  grads = jax.jit(jax.grad(loss))(variables['params'])
  dead = [jax.tree_util.keystr(p) for p, g in jax.tree_util.tree_leaves_with_path(grads)
          if not np.any(np.asarray(g))]
  assert not dead, dead
  image = variables['params']['image_encoder']
  assert ('token_proj' in image) == F.uses_tokens(fusion)
  assert ('pool_proj' in image) != F.uses_tokens(fusion)
  stages = sum(k.startswith('conv_') for k in image)
  last = cfg.encoders.image.extra_layers + 1
  assert stages == (token_stage % last + 1 if F.uses_tokens(fusion) else last)
  out = jax.jit(model.apply)(variables, batch)
  assert set(out['embeddings']) == (set() if F.uses_tokens(fusion) else {'image', 'audio'})
