"""Transfer between runs (crossmodal/transfer.py): init_from copies a tower from another run's
checkpoint, frozen parameters do not move and hold no optimizer state (and a frozen encoder's
BatchNorm statistics stay), exact resume still holds and never re-applies init_from, and bad
entries or patterns are config errors that name them."""
import json
import os
import shutil

import jax
import ml_collections
import numpy as np
import pytest

from crossmodal import config_utils
from crossmodal import train
from crossmodal import transfer
from conftest import assert_trees_bitwise_equal, tiny_config

LOCK_IMAGE = ('image_encoder/.*',)


@pytest.fixture(scope='module')
def source_run(tmp_path_factory):
  """A tiny run to start from: (config, workdir, its best checkpoint's state)."""
  config = tiny_config()
  workdir = str(tmp_path_factory.mktemp('source') / 'w')
  train.train_and_evaluate(config, workdir, final_checkpoint=None)
  _, state, _ = train.restore_state(config, workdir, 'best')
  return config, workdir, jax.device_get(state)


def _leaves(tree):
  return dict(zip(transfer.param_paths(tree), jax.tree.leaves(tree)))


def test_frozen_parameters_do_not_move_and_hold_no_optimizer_state(tmp_path):
  config = tiny_config()
  config.train.frozen = LOCK_IMAGE
  run = train._Run(config)  # pylint: disable=protected-access
  start = jax.device_get(run.initial_state())
  result = train.train_and_evaluate(config, str(tmp_path / 'w'), final_checkpoint=None)
  end = jax.device_get(result.state)
  assert_trees_bitwise_equal(end.params['image_encoder'], start.params['image_encoder'])
  # The locked encoder ran in inference mode: its BatchNorm statistics did not move either.
  assert jax.tree.leaves(start.batch_stats['image_encoder'])
  assert_trees_bitwise_equal(end.batch_stats['image_encoder'], start.batch_stats['image_encoder'])
  for part in ('audio_encoder', 'fusion'):  # ... and everything else trained
    assert any(not np.array_equal(a, b) for a, b in zip(
        jax.tree.leaves(end.params[part]), jax.tree.leaves(start.params[part]))), part
  assert not np.array_equal(jax.tree.leaves(end.batch_stats['audio_encoder'])[0],
                            jax.tree.leaves(start.batch_stats['audio_encoder'])[0])
  # No optimizer state for the frozen leaves: AdamW's two moments exist for the others only.
  unlocked = train._Run(tiny_config()).initial_state(abstract=True)  # pylint: disable=protected-access
  size = lambda tree: sum(x.size for x in jax.tree.leaves(tree))
  image = size(start.params['image_encoder'])
  assert size(unlocked.opt_state) - size(start.opt_state) == 2 * image
  info = json.load(open(tmp_path / 'w' / 'run_info.json'))
  assert info['params_frozen_trainable'] == {'frozen': image,
                                             'trainable': info['num_params'] - image}


def test_init_from_copies_the_tower_and_the_rest_starts_fresh(source_run):
  _, workdir, source = source_run
  config = tiny_config()
  config.seed = 1  # another seed: only the copied tower may equal the source
  config.init_from = ml_collections.ConfigDict(
      {'image': transfer.init_from_config(workdir, 'best', source='image_encoder')})
  state = jax.device_get(train._Run(config).initial_state())  # pylint: disable=protected-access
  assert_trees_bitwise_equal(state.params['image_encoder'], source.params['image_encoder'])
  assert_trees_bitwise_equal(state.batch_stats['image_encoder'],
                             source.batch_stats['image_encoder'])
  fresh = _leaves(source.params['audio_encoder'])
  assert all(not np.array_equal(v, fresh[k])
             for k, v in _leaves(state.params['audio_encoder']).items() if v.size > 8)


def test_init_from_a_step_number_and_the_source_left_untouched(source_run, tmp_path):
  """checkpoint='8' takes step 8 (not the latest, 12), and reading the source run's directory
  changes nothing there, not even an unfinished save in it."""
  config, workdir, _ = source_run
  source = str(tmp_path / 'source')
  shutil.copytree(workdir, source)
  in_flight = os.path.join(source, 'checkpoints', '16.orbax-checkpoint-tmp-123')
  os.makedirs(in_flight)
  before = sorted(os.listdir(os.path.join(source, 'checkpoints')))
  lit = tiny_config()
  lit.init_from = ml_collections.ConfigDict(
      {'tower': transfer.init_from_config(source, '8', source='image_encoder')})
  state = jax.device_get(train._Run(lit).initial_state())  # pylint: disable=protected-access
  _, step8, _ = train.restore_state(config, workdir, 8)
  _, step12, _ = train.restore_state(config, workdir, 'latest')
  assert_trees_bitwise_equal(state.params['image_encoder'],
                             jax.device_get(step8.params['image_encoder']))
  assert any(not np.array_equal(a, b) for a, b in zip(
      jax.tree.leaves(state.params['image_encoder']),
      jax.tree.leaves(jax.device_get(step12.params['image_encoder']))))
  assert sorted(os.listdir(os.path.join(source, 'checkpoints'))) == before


def test_best_of_another_run_is_ranked_as_that_run_ranked():
  assert transfer._ranking('/nowhere', {'best': {'metric': 'retrieval/a_to_b/class/median_rank',
                                                 'mode': 'min'}}) == (
      'retrieval/a_to_b/class/median_rank', 'min')
  assert transfer._ranking('/nowhere', {'best': None}) is None  # it kept no best
  assert transfer._ranking('/nowhere', {}) is None  # older checkpoint, no config.json


def test_lit_resumes_bitwise_and_never_applies_init_from_again(source_run, tmp_path):
  """A locked, copied image tower (LiT): interrupted at step 8 and resumed after the source
  run is gone, the run ends bitwise where an uninterrupted one does, tower unchanged."""
  _, workdir, source = source_run
  source_copy = str(tmp_path / 'source')
  shutil.copytree(workdir, source_copy)

  def lit_config():
    config = tiny_config()
    config.init_from = ml_collections.ConfigDict(
        {'image': transfer.init_from_config(source_copy, 'latest', source='image_encoder')})
    config.train.frozen = LOCK_IMAGE
    return config

  reference = train.train_and_evaluate(lit_config(), str(tmp_path / 'reference'),
                                       final_checkpoint=None)

  def crash_after_8(step):
    if step == 8:
      raise KeyboardInterrupt('simulated crash')

  with pytest.raises(KeyboardInterrupt):
    train.train_and_evaluate(lit_config(), str(tmp_path / 'w'), final_checkpoint=None,
                             after_step=crash_after_8)
  shutil.rmtree(source_copy)  # a resume that read init_from again would fail now
  resumed = train.train_and_evaluate(lit_config(), str(tmp_path / 'w'), final_checkpoint=None)
  assert_trees_bitwise_equal(resumed.state, reference.state)
  _, latest, _ = train.restore_state(source_run[0], workdir, 'latest')
  assert_trees_bitwise_equal(jax.device_get(resumed.state.params['image_encoder']),
                             jax.device_get(latest.params['image_encoder']))


def test_bad_entries_and_patterns_are_config_errors(source_run, tmp_path):
  _, workdir, _ = source_run
  error = lambda match: pytest.raises(config_utils.ConfigError, match=match)
  config = tiny_config()
  config.init_from = ml_collections.ConfigDict(
      {'tower': transfer.init_from_config(str(tmp_path / 'nowhere'))})
  with error(r"config.init_from.tower.workdir='.*nowhere': has no checkpoints/ directory"):
    train.train_and_evaluate(config, str(tmp_path / 'w'))
  assert not os.path.exists(tmp_path / 'w')  # refused before anything was written
  config.init_from.tower.update(workdir=workdir, checkpoint='last')
  with error(r"config.init_from.tower.checkpoint='last': must be 'best', 'latest' or a step"):
    train.check_config(config)
  config.init_from.tower.update(checkpoint='latest', source='image_encoder', target='fusion')
  with error(r'config.init_from.tower: .* params/image_encoder does not fit this model '
             r'params/fusion:\n  .*only in'):
    train._Run(config).initial_state()  # pylint: disable=protected-access
  wider = tiny_config()
  wider.model.dim = 12  # the source's encoders project to 8
  wider.init_from = ml_collections.ConfigDict(
      {'tower': transfer.init_from_config(workdir, 'latest', source='image_encoder')})
  with error(r'params/image_encoder does not fit this model params/image_encoder:\n  '
             r'pool_proj/bias: .* has float32\[8\], this model params/image_encoder has '
             r'float32\[12\]'):
    train._Run(wider).initial_state()  # pylint: disable=protected-access
  config = tiny_config()
  config.train.frozen = ('image_encoder/conv_0/.*',)  # part of an encoder with BatchNorm
  with error(r"freezes \['image_encoder'\] only in part, and they have BatchNorm statistics"):
    train._Run(config)  # pylint: disable=protected-access
  config.train.frozen = ('image_encodr/.*',)
  with error(r"config.train.frozen: \['image_encodr/.\*'\] match no parameter .*top-level "
             r"parts are \['audio_encoder', 'fusion', 'image_encoder'\]"):
    train._Run(config)  # pylint: disable=protected-access
  config.train.frozen = ('image_encoder/[',)
  with error(r"config.train.frozen: 'image_encoder/\[' is not a regular expression"):
    train.check_config(config)
