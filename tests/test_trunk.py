"""Which LeNet stages run (encoders.lenet_trunk): 'auto' keeps the published models, 'full'
gives attention fusions every stage, 'to_token_stage' cuts every fusion at the token stage."""
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from crossmodal import config_utils
from crossmodal import train
from crossmodal.models import encoders as encoders_lib
from crossmodal.models import model as model_lib
from conftest import REPO

pytestmark = pytest.mark.usefixtures('fast_prng')  # tests/conftest.py

AVMNIST = os.path.join(REPO, 'experiments', 'avmnist.py')
BATCH = {'image': jnp.zeros((2, 28, 28, 1), jnp.uint8), 'audio': jnp.zeros((2, 8000))}


def _model(arg):
  return train.build_model(config_utils.load_config_file(f'{AVMNIST}:{arg}'), 10, None)


def _param_counts(model):
  variables = jax.eval_shape(lambda: model.init(jax.random.key(0), BATCH))
  return model_lib.param_counts_by_part(variables['params'])


@pytest.mark.parametrize('arg,record', [
    ('fusion=crossattn', 'crossattn/crossattn/seed0'),
    ('fusion=concat', 'avmnist_transfer/random_towers/seed0'),  # towers locked, same model
])
def test_auto_trunk_builds_the_models_of_the_published_runs(arg, record):
  with open(os.path.join(REPO, 'docs', 'runs', record, 'run_info.json'), encoding='utf-8') as f:
    recorded = json.load(f)['params_by_part']
  model = _model(arg)
  assert _param_counts(model) == recorded
  if 'crossattn' in arg:  # a run since the trunk switch: the training loop records the stages
    with open(os.path.join(REPO, 'docs', 'runs', 'missing_modality', 'crossattn', 'seed0',
                           'run_info.json'), encoding='utf-8') as f:
      assert json.load(f)['trunks'] == model.trunks()
  stages = {m: (t['trunk'], t['stages'], t['of']) for m, t in model.trunks().items()}
  assert stages == ({'image': ('to_token_stage', 3, 4), 'audio': ('to_token_stage', 4, 6)}
                    if 'crossattn' in arg else {'image': ('full', 4, 4), 'audio': ('full', 6, 6)})


def test_equal_trunks_give_every_fusion_the_same_conv_stages():
  """The conv parameters (the trunk) of concat and crossattn agree under full and under
  to_token_stage; only the projections out of the trunk differ."""
  def conv_params(model):
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), BATCH))
    return {f'{m}/{k}': jax.tree.map(lambda x: x.shape, v)
            for m in ('image', 'audio') for k, v in variables['params'][f'{m}_encoder'].items()
            if k.startswith(('conv_', 'norm_'))}
  for trunk in ('full', 'to_token_stage'):
    concat, crossattn = (_model(f'fusion={f},trunk={trunk}') for f in ('concat', 'crossattn'))
    assert conv_params(concat) == conv_params(crossattn), trunk
    stages = lambda model: {m: (t['trunk'], t['stages']) for m, t in model.trunks().items()}
    assert stages(concat) == stages(crossattn)
    assert {t['summary_token'] for t in crossattn.trunks().values()} == {trunk == 'full'}
  assert len(conv_params(_model('fusion=concat,trunk=full'))) == 2 * (4 + 6)
  assert len(conv_params(_model('fusion=concat,trunk=to_token_stage'))) == 2 * (3 + 4)


def _lenet(trunk, with_tokens, with_pooled, pool='flatten'):
  cfg = encoders_lib.encoder_config('image', 'lenet', token_stage=2, trunk=trunk, pool=pool)
  return encoders_lib.build_encoder('image', cfg, 16, with_tokens=with_tokens,
                                    with_pooled=with_pooled)


def test_full_trunk_under_attention_adds_the_pooled_final_map_as_a_token():
  images = jnp.asarray(np.random.default_rng(0).integers(0, 256, (2, 28, 28, 1)), jnp.uint8)
  enc = _lenet('full', with_tokens=True, with_pooled=False)
  variables = enc.init(jax.random.key(0), images)
  out = enc.apply(variables, images)
  assert out.tokens.shape == (2, 3 * 3 + 1, 16) and out.mask.shape == (2, 10)
  np.testing.assert_array_equal(out.tokens[:, -1], out.pooled)

  def loss(params):  # what an attention fusion reads: the tokens only
    return jnp.sum(jnp.sin(enc.apply({**variables, 'params': params}, images).tokens))
  grads = jax.grad(loss)(variables['params'])
  assert {'conv_3', 'pool_proj', 'token_proj'} <= set(grads)
  for name, g in grads.items():  # the last stage reaches the loss through the summary token
    assert max(float(jnp.abs(x).max()) for x in jax.tree.leaves(g)) > 0, name


def test_token_stage_trunk_pools_the_token_stage_map():
  images = jnp.zeros((2, 28, 28, 1), jnp.uint8)
  enc = _lenet('to_token_stage', with_tokens=False, with_pooled=True)
  variables = enc.init(jax.random.key(0), images)
  assert 'conv_3' not in variables['params']
  assert variables['params']['pool_proj']['kernel'].shape == (3 * 3 * 24, 16)  # flattened
  assert enc.apply(variables, images).pooled.shape == (2, 16)


def test_bad_trunk_is_a_config_error_naming_the_choices():
  with pytest.raises(config_utils.ConfigError, match='trunk.*to_token_stage'):
    config_utils.load_config_file(f'{AVMNIST}:trunk=half')
  with pytest.raises(Exception, match='trunk.*valid choices'):
    encoders_lib.encoder_config('audio', 'lenet', trunk='half')
