"""Every experiment config in experiments/*.py imports, validates, and trains a few steps
(base.py's few steps, with the same checks, are in tests/test_scale.py, which trains it anyway).

Configs keep their model; only the run is shortened (steps, batch sizes, eval batches). AV-MNIST
runs on a real prefix subset of each split, built by the real TFDS builder from ../shared/data
into a temporary data_dir (`builder_config='<variant>_n64'`).
"""
import glob
import re
import os

import jax
import numpy as np
import pytest

from crossmodal import files
from crossmodal import config_utils
from crossmodal import train
from crossmodal.data import sources
from crossmodal.models import fusion as fusion_lib
from crossmodal.models import model as model_lib
from conftest import REPO, assert_trees_bitwise_equal

EXPERIMENTS = sorted(glob.glob(os.path.join(REPO, 'experiments', '*.py')))
SUBSET = 64


def load(path):
  return config_utils.load_module(path, f'experiment_{os.path.basename(path)[:-3]}')


def shorten(config, tfds_dir):
  """A few steps of the same model on a little data."""
  config.train.update(num_steps=2, log_every=1, checkpoint_every=0)
  for evaluator in config.evaluators.values():
    if evaluator.every:  # in-loop evaluators: once, at the last step
      evaluator.every = 2
    if evaluator.type == 'classification':
      evaluator.max_batches = 1
  config.data.global_batch_size = 8 * jax.device_count()
  config.data.eval_batch_size = 8 * jax.device_count()
  if config.data.name == 'avmnist':
    config.data.builder_config = f'{config.data.builder_config}_n{SUBSET}'
    config.data.data_dir = str(tfds_dir)
  elif config.data.name == 'emoji':  # small enough to build whole (about 10 s)
    config.data.data_dir = str(tfds_dir)
  elif config.data.name == 'synthetic':
    config.data.synthetic.update(num_train=64, num_validation=16, num_test=16)
  return config


def test_experiment_files_found():
  names = {os.path.basename(p) for p in EXPERIMENTS}
  assert {'synthetic.py', 'avmnist.py'} <= names


@pytest.mark.parametrize('path', EXPERIMENTS, ids=os.path.basename)
def test_default_config_is_valid_and_documented(path):
  module = load(path)
  assert 'python -m crossmodal.main --config=experiments/' in module.__doc__
  assert 'TODO' not in module.__doc__, 'the docstring must state the measured result'
  config = module.get_config()
  train.check_config(config)  # every option, the evaluators and best_metric; reads no data


@pytest.fixture(scope='module')
def tfds_dir(tmp_path_factory):
  """One data_dir for the module: configs that share a dataset variant build it once."""
  return tmp_path_factory.mktemp('tfds')


# base.py (size=tiny) trains, with these checks, in test_scale's
# test_base_config_tiny_trains_the_same_with_remat_and_dot_product_attention, as the reference
# run of its remat/attention comparison: a third run of the same model here would add nothing.
TRAINED_HERE = [p for p in EXPERIMENTS if os.path.basename(p) != 'base.py']


@pytest.mark.slow
@pytest.mark.parametrize('path', TRAINED_HERE, ids=os.path.basename)
def test_experiment_trains_a_few_steps(path, tmp_path_factory, tfds_dir):
  """The default model of each config (or, where the file names a TEST_ARG preset, e.g.
  base.py's size=tiny, that one: the same code at a size a CPU trains in seconds)."""
  module = load(path)
  config = module.get_config(getattr(module, 'TEST_ARG', None))
  if config.data.name in ('avmnist', 'emoji') and sources.resolve_manual_dir() is None:
    pytest.fail(f'Data sources not found at {sources.default_shared_dir()} '
                f'(or ${sources.ENV_VAR}); they are required for this test')
  config = shorten(config, tfds_dir)
  workdir = str(tmp_path_factory.mktemp('run') / 'w')
  result = train.train_and_evaluate(config, workdir)
  assert result.step == 2
  records = files.read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
  train_losses = [r['loss'] for r in records if r['split'] == 'train']
  assert len(train_losses) == 2 and np.all(np.isfinite(train_losses))
  for name in ('validation', 'test'):  # in the loop, or (every=0) only at the end
    got = result.metrics[name] if name in result.metrics else result.final[name]
    assert got['num_examples'] > 0
    assert np.isfinite(got['loss'])
  evaluated = {r['split'] for r in files.read_jsonl(os.path.join(workdir, 'metrics.jsonl'))}
  for name in config.evaluators:  # every configured evaluator ran on the best checkpoint
    assert f'eval_{name}' in evaluated, (name, sorted(evaluated))


@pytest.mark.parametrize('fusion', sorted(fusion_lib.FUSIONS))
def test_avmnist_fusion_presets_build(fusion):
  config = load(os.path.join(REPO, 'experiments', 'avmnist.py')).get_config(f'fusion={fusion}')
  config_utils.validate(config, device_count=1, process_count=1)
  assert config.model.fusion.type == fusion
  model_lib.build_model(config.model, 10)


@pytest.mark.parametrize('arg,modalities', [('modalities=image', ('image',)),
                                            ('modalities=audio', ('audio',)),
                                            ('image=vit,audio=ast', ('image', 'audio'))])
def test_avmnist_unimodal_and_encoder_presets(arg, modalities):
  config = load(os.path.join(REPO, 'experiments', 'avmnist.py')).get_config(arg)
  assert tuple(config.model.modalities) == modalities
  assert set(config.model.encoders) == set(modalities)
  model_lib.build_model(config.model, 10)


def test_avmnist_bad_preset_lists_choices():
  module = load(os.path.join(REPO, 'experiments', 'avmnist.py'))
  with pytest.raises(config_utils.ConfigError, match=r"fusion='attn'; valid choices: \("):
    module.get_config('fusion=attn')
  with pytest.raises(config_utils.ConfigError, match=r"variant='noisy'; valid choices"):
    module.get_config('variant=noisy')
  with pytest.raises(config_utils.ConfigError, match=r"variant='pca785'; valid choices: .*pca<k>"):
    module.get_config('variant=pca785')
  assert module.get_config('variant=pca8,snr=-3').data.builder_config == 'pca8_snr-3'


SWEEPS = sorted(glob.glob(os.path.join(REPO, 'experiments', 'sweeps', '*.py')))


@pytest.mark.parametrize('path', SWEEPS, ids=os.path.basename)
def test_every_sweep_variant_builds(path):
  """Each variant of each sweep, on the base config its docstring's command names, gives a
  valid config whose data and model build (a bad preset fails here, not hours into a sweep)."""
  from crossmodal import ablate  # pylint: disable=import-outside-toplevel
  doc = config_utils.load_module(path, f'sweep_{os.path.basename(path)[:-3]}').__doc__
  match = re.search(r'--config=(\S+)', doc)
  assert match, f'{path}: the docstring must give the ablate command with --config='
  base = match.group(1)
  base_path, _, base_arg = base.partition(':')
  for variant in ablate.load_sweep(path):
    arg = ','.join(a for a in (base_arg, variant.arg) if a)
    config = config_utils.load_config_file(os.path.join(REPO, base_path) + (f':{arg}' if arg
                                                                            else ''))
    for key, value in variant.overrides.items():
      node = config
      *parents, leaf = key.split('.')
      for p in parents:
        node = node[p]
      node[leaf] = value
    for evaluator in config.get('evaluators', {}).values():
      if evaluator.get('classifier'):  # a run the docstring trains first (gan.py)
        evaluator.classifier = ''
    train.check_config(config)


@pytest.mark.slow
def test_emoji_lit_presets_start_from_a_tower_and_lock_it(tmp_path_factory, tfds_dir):
  """emoji_retrieval.py:image_from=<an image-only emoji run>,locked=true (LiT) trains with the
  tower's image encoder, unchanged, and the sigmoid loss."""
  if sources.resolve_manual_dir() is None:
    pytest.fail(f'Data sources not found at {sources.default_shared_dir()}')
  experiments = os.path.join(REPO, 'experiments')
  tower = shorten(load(os.path.join(experiments, 'emoji.py')).get_config('modalities=image'),
                  tfds_dir)
  tower_dir = str(tmp_path_factory.mktemp('tower') / 'w')
  train.train_and_evaluate(tower, tower_dir, final_checkpoint=None)
  config = shorten(load(os.path.join(experiments, 'emoji_retrieval.py')).get_config(
      f'image_from={tower_dir},locked=true,loss=sigmoid'), tfds_dir)
  result = train.train_and_evaluate(config, str(tmp_path_factory.mktemp('lit') / 'w'))
  _, tower_state, _ = train.restore_state(tower, tower_dir, 'best')
  assert_trees_bitwise_equal(result.state.params['image_encoder'],
                             tower_state.params['image_encoder'])
  assert 'zero_shot' in result.final and 'logit_bias' in result.state.params


@pytest.mark.slow
def test_avmnist_transfer_presets_probe_and_start_from_contrastive_towers(tmp_path_factory,
                                                                          tfds_dir):
  """avmnist_retrieval.py:probes=true, then avmnist.py:encoders_from=<it>,locked=true: both
  towers come through bitwise from the contrastive run's best checkpoint, and every run
  reports a linear probe of each tower."""
  if sources.resolve_manual_dir() is None:
    pytest.fail(f'Data sources not found at {sources.default_shared_dir()}')
  experiments = os.path.join(REPO, 'experiments')
  pre = shorten(load(os.path.join(experiments, 'avmnist_retrieval.py')).get_config(
      'probes=true'), tfds_dir)
  pre_dir = str(tmp_path_factory.mktemp('pretrain') / 'w')
  pre_result = train.train_and_evaluate(pre, pre_dir)
  config = shorten(load(os.path.join(experiments, 'avmnist.py')).get_config(
      f'probes=true,encoders_from={pre_dir},locked=true'), tfds_dir)
  result = train.train_and_evaluate(config, str(tmp_path_factory.mktemp('ft') / 'w'))
  _, pre_state, _ = train.restore_state(pre, pre_dir, 'best')
  for m in ('image', 'audio'):
    assert_trees_bitwise_equal(result.state.params[f'{m}_encoder'],
                               pre_state.params[f'{m}_encoder'])
    for r in (pre_result, result):
      assert 0.0 <= r.final[f'probe_{m}']['accuracy'] <= 1.0
      assert r.final[f'probe_{m}']['num_train'] > 0
