"""The training loop and optimizers on tiny synthetic runs.

Covers: optax construction (schedules, decay mask, clipping, accumulation == large batch),
a full train_and_evaluate (metrics.jsonl/TensorBoard/config.json, checkpoints last K + best,
evaluation from a checkpoint), restart on a finished workdir, the tree-mismatch error, the
workdir lock, NaN stop, bfloat16 compute with float32 state, and exact resume: a run SIGKILLed
and SIGTERMed at arbitrary steps and restarted ends bitwise equal to an uninterrupted run.
"""
import functools
import json
import os
import shutil
import subprocess
import sys

import flax
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from crossmodal import files
from crossmodal import checkpointing
from crossmodal import config_utils
from crossmodal import optim
from crossmodal import run_info
from crossmodal import train
from conftest import REPO, SYNTHETIC, assert_trees_bitwise_equal, tiny_config


# ----------------------------------------------------------------------------- optim


def _optim(**kw):
  return optim.optim_config(**kw)


def test_warmup_cosine_and_constant_schedules():
  s = optim.make_schedule(_optim(lr=1.0, warmup_steps=10, schedule='cosine', end_lr_ratio=0.1),
                          110)
  np.testing.assert_allclose([s(0), s(5), s(10)], [0.0, 0.5, 1.0], atol=1e-6)
  np.testing.assert_allclose(s(60), 0.1 + 0.9 * 0.5, atol=1e-6)  # cosine midpoint
  np.testing.assert_allclose(s(110), 0.1, atol=1e-6)
  c = optim.make_schedule(_optim(lr=0.3, warmup_steps=4, schedule='constant'), 100)
  np.testing.assert_allclose([c(0), c(2), c(4), c(99)], [0.0, 0.15, 0.3, 0.3], atol=1e-6)
  with pytest.raises(ValueError, match="valid choices: \\('cosine', 'constant'\\)"):
    optim.make_schedule(_optim(schedule='step'), 10)


@pytest.mark.parametrize('name', optim.OPTIMIZERS)
def test_each_optimizer_minimises_and_decays_only_matrices(name):
  params = {'w': jnp.ones((3, 2)), 'b': jnp.ones((2,))}
  target = {'w': jnp.full((3, 2), 0.5), 'b': jnp.full((2,), -0.5)}
  loss = lambda p: sum(jnp.sum((p[k] - target[k]) ** 2) for k in p)  # noqa: E731
  tx = optim.make_optimizer(_optim(name=name, lr=0.05, schedule='constant', weight_decay=0.0,
                                   momentum=0.5), 200)

  def step(carry, _):
    p, state = carry
    updates, state = tx.update(jax.grad(loss)(p), state, p)
    return (optax.apply_updates(p, updates), state), None
  (p, _), _ = jax.lax.scan(step, (params, tx.init(params)), None, length=200)
  assert loss(p) < 1e-2 * loss(params)
  # With zero gradients only the weight decay acts: on the matrix, never on the bias.
  tx = optim.make_optimizer(_optim(name=name, lr=0.1, schedule='constant', weight_decay=0.5,
                                   momentum=0.0), 10)
  zero = jax.tree.map(jnp.zeros_like, params)
  updates, _ = tx.update(zero, tx.init(params), params)
  assert float(jnp.abs(updates['b']).max()) == 0.0
  assert float(updates['w'].max()) < 0.0


def test_gradient_clipping_bounds_the_update():
  tx = optim.make_optimizer(_optim(name='sgd', lr=1.0, schedule='constant', momentum=0.0,
                                   weight_decay=0.0, grad_clip=0.5), 10)
  grads = {'w': jnp.full((4, 4), 10.0)}
  updates, _ = tx.update(grads, tx.init(grads), grads)
  np.testing.assert_allclose(optax.tree.norm(updates), 0.5, rtol=1e-5)


def test_accumulation_equals_one_step_on_the_mean_gradient():
  cfg = _optim(name='adamw', lr=0.1, schedule='cosine', warmup_steps=1, weight_decay=0.01,
               grad_clip=1.0)
  params = {'w': jnp.arange(6.0).reshape(2, 3)}
  micro = [{'w': jax.random.normal(jax.random.PRNGKey(i), (2, 3))} for i in range(6)]
  cfg.accum_steps = 3
  tx = optim.make_optimizer(cfg, 6)
  update = jax.jit(tx.update)
  state, p = tx.init(params), params
  for g in micro:
    updates, state = update(g, state, p)
    p = optax.apply_updates(p, updates)
  cfg.accum_steps = 1
  ref_tx = optim.make_optimizer(cfg, 2)
  ref_update = jax.jit(ref_tx.update)
  ref_state, q = ref_tx.init(params), params
  for i in range(2):
    mean = jax.tree.map(lambda *g: sum(g) / 3, *micro[3 * i:3 * i + 3])
    updates, ref_state = ref_update(mean, ref_state, q)
    q = optax.apply_updates(q, updates)
  np.testing.assert_allclose(p['w'], q['w'], rtol=1e-5, atol=1e-6)


# ----------------------------------------------------------------------------- full run


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('run') / 'w')
  config = tiny_config()
  result = train.train_and_evaluate(config, workdir)
  return config, workdir, result


def test_run_writes_metrics_config_and_checkpoints(trained):
  config, workdir, result = trained
  assert result.step == 12
  records = files.read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
  by = {(r['split'], r['step']): r for r in records}
  assert sorted(s for sp, s in by if sp == 'train') == [4, 8, 12]
  assert sorted(s for sp, s in by if sp == 'validation') == [6, 12]
  assert sorted(s for sp, s in by if sp == 'test') == [6, 12]
  tr = by[('train', 8)]
  for key in ('loss', 'accuracy', 'grad_norm', 'lr', 'steps_per_sec', 'examples_per_sec'):
    assert np.isfinite(tr[key]), key
  assert tr['examples_per_sec'] == pytest.approx(16 * tr['steps_per_sec'])
  with open(os.path.join(workdir, run_info.RUN_INFO)) as f:
    info = json.load(f)
  leaves = jax.tree.leaves(result.state.params)
  assert info['num_params'] == sum(x.size for x in leaves) == sum(info['params_by_part'].values())
  head = subprocess.run(['git', '-C', os.path.dirname(train.__file__), 'rev-parse', 'HEAD'],
                        capture_output=True, text=True)
  assert info['code']['git_commit'] == (head.stdout.strip() if head.returncode == 0 else None)
  assert info['code']['jax'] == jax.__version__ and info['code']['flax'] == flax.__version__
  val = by[('validation', 12)]
  assert val['num_examples'] == 40  # 40 examples in 2 batches of 32: padding not counted
  assert np.sum(val['confusion_matrix']) == 40
  assert len(val['precision']) == len(val['recall']) == 10
  assert val == {**val, **{k: v for k, v in result.metrics['validation'].items()}}
  assert json.load(open(os.path.join(workdir, 'config.json'))) == config_utils.to_dict(config)
  assert os.listdir(os.path.join(workdir, 'tensorboard'))
  ckpt = train.make_checkpointer(config, workdir)
  try:
    # Saved at 4, 6 (eval), 8, 12 (eval); the last two are kept, plus the best by validation.
    best = ckpt.best_step()
    assert best in (6, 12)
    assert set(ckpt.all_steps()) == {8, 12} | {best}
  finally:
    ckpt.close()


def test_evaluate_checkpoint_reproduces_recorded_metrics(trained):
  config, workdir, result = trained
  latest = train.evaluate(config, workdir, 'latest')
  for split in ('validation', 'test'):
    assert latest[split]['confusion_matrix'] == result.metrics[split]['confusion_matrix']
    assert latest[split]['loss'] == pytest.approx(result.metrics[split]['loss'], rel=1e-6)
  records = files.read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
  assert {r['split'] for r in records if r['split'].startswith('eval_')} == {
      'eval_validation', 'eval_test'}


def test_restart_on_finished_workdir_trains_nothing(trained):
  config, workdir, result = trained
  before = len(files.read_jsonl(os.path.join(workdir, 'metrics.jsonl')))
  again = train.train_and_evaluate(config, workdir)
  assert again.step == 12
  assert_trees_bitwise_equal(again.state, result.state)
  records = files.read_jsonl(os.path.join(workdir, 'metrics.jsonl'))[before:]
  assert not [r for r in records if r['split'] == 'train']


def test_experiment_changes_ignore_paths_cadence_and_fields_added_since():
  recorded = config_utils.to_dict(tiny_config())
  config = tiny_config()
  config.data.data_dir, config.train.log_every, config.train.parallel = '/x', 7, 'pmap'
  assert config_utils.experiment_changes(recorded, config) == []
  del recorded['optim']['lr']  # as if `lr` were added to the code after this run started
  assert config_utils.experiment_changes(recorded, config) == []
  config.optim.b1, config.model.dim = 0.5, 12
  assert config_utils.experiment_changes(recorded, config) == [
      f'model.dim: {recorded["model"]["dim"]} -> 12',
      f'optim.b1: {json.dumps(recorded["optim"]["b1"])} -> 0.5']
  # Evaluators read the state and never change it, except that the one best_metric reads
  # ranks the checkpoints: its options (not its cadence) are part of the experiment.
  config = tiny_config()
  config.evaluators.test.max_batches, config.evaluators.validation.every = 1, 3
  assert config_utils.experiment_changes(recorded, config) == []
  config.evaluators.validation.max_batches = 1
  assert config_utils.experiment_changes(recorded, config) == [
      'evaluators.validation.max_batches: 0 -> 1']


def test_resuming_with_another_config_is_refused_naming_the_difference(trained, tmp_path):
  config, workdir, _ = trained
  other = tiny_config()
  other.model.dim, other.optim.lr = 12, 0.5
  with pytest.raises(config_utils.ConfigError) as e:
    train.train_and_evaluate(other, workdir)
  assert f'model.dim: {config.model.dim} -> 12' in str(e.value)
  assert f'optim.lr: {config.optim.lr} -> 0.5' in str(e.value)
  assert 'seed' not in str(e.value)  # only what differs
  # Where and how a run executes is not the experiment: these resume (nothing left to train).
  how = tiny_config()
  how.train.log_every, how.data.worker_count = 3, 2
  assert train.train_and_evaluate(how, workdir).step == 12
  # Without its config.json, the checkpoint itself still refuses another model.
  copy = str(tmp_path / 'copy')
  shutil.copytree(workdir, copy)
  os.remove(os.path.join(copy, 'config.json'))
  with pytest.raises(ValueError, match=r'params/.*shape/dtype mismatch|shape/dtype mismatch'):
    train.train_and_evaluate(other, copy)


def test_second_run_on_locked_workdir_refuses(tmp_path):
  workdir = str(tmp_path / 'w')
  with checkpointing.WorkdirLock(workdir):
    with pytest.raises(checkpointing.WorkdirLockedError, match='in use by another run'):
      train.train_and_evaluate(tiny_config(), workdir)
  assert not os.path.exists(os.path.join(workdir, 'checkpoints'))


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
  workdir = str(tmp_path / 'w')
  config = tiny_config()
  config.optim.update(name='sgd', lr=1e30, warmup_steps=0, schedule='constant')
  config.train.checkpoint_every = 1
  with pytest.raises(train.NonFiniteLossError, match=r'loss is nan at step (\d+)') as e:
    train.train_and_evaluate(config, workdir)
  bad_step = int(e.value.args[0].split('at step ')[1].split(':')[0])
  _, state, meta = train.restore_state(config, workdir, 'latest')
  assert meta['step'] == bad_step - 1  # saved every step up to the last good one
  assert all(np.isfinite(np.asarray(x)).all() for x in jax.tree.leaves(state.params))


def test_bfloat16_compute_keeps_float32_params_and_optimizer_state(tmp_path):
  config = tiny_config()
  config.train.dtype = 'bfloat16'
  run = train._Run(config)  # pylint: disable=protected-access
  state = run.initial_state(abstract=True)  # shapes only: nothing is compiled here
  pipeline = run.batches('train', training=True)
  batch = next(pipeline)
  pipeline.close()
  step = train.make_train_step(run.model, run.tx, None)
  jaxpr = jax.make_jaxpr(step)(state, batch)
  assert 'bf16[' in str(jaxpr)  # the model computes in bfloat16 ...
  new_state, metrics = jax.eval_shape(step, state, batch)
  assert metrics['loss'].dtype == jnp.float32  # ... the loss in float32 ...
  floats = [x for x in jax.tree.leaves((state.params, state.opt_state, new_state.params,
                                        new_state.opt_state, new_state.batch_stats))
            if jnp.issubdtype(x.dtype, jnp.floating)]
  assert floats and all(x.dtype == jnp.float32 for x in floats)  # ... state stays float32


# ----------------------------------------------------------------------------- exact resume


RESUME_DROPOUT = 0.3  # so that the per-step dropout keys are part of what must resume exactly


def _cli(workdir, interrupt=None, cache_dir=None):
  """main --mode=train in a subprocess; interrupt=(step, signal name) sends that signal right
  after that step (tests/interrupt_at_step.py)."""
  # A shared persistent compilation cache: the restarted processes reuse the executables.
  env = {'JAX_COMPILATION_CACHE_DIR': str(cache_dir),
         'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0'}
  program = (['-m', 'crossmodal.main'] if interrupt is None else
             [os.path.join(REPO, 'tests', 'interrupt_at_step.py'), *map(str, interrupt)])
  return subprocess.run(
      [sys.executable, *program, f'--config={SYNTHETIC}:size=tiny',
       f'--workdir={workdir}', '--mode=train', f'--config.model.dropout={RESUME_DROPOUT}'],
      cwd=REPO, env={**os.environ, **env}, capture_output=True, text=True,
      timeout=300)


@pytest.mark.slow
def test_killed_and_preempted_run_resumes_bitwise(tmp_path):
  config = tiny_config()
  config.model.dropout = RESUME_DROPOUT
  # --mode=train, as the interrupted runs below: no evaluation of a checkpoint at the end.
  uninterrupted = train.train_and_evaluate(config, str(tmp_path / 'reference'),
                                           final_checkpoint=None)
  no_dropout = tiny_config()
  reference_params = jax.tree.leaves(uninterrupted.state.params)
  without_dropout = jax.tree.leaves(
      train.train_and_evaluate(no_dropout, str(tmp_path / 'nd')).state.params)
  # The dropout really changes training, so resuming its per-step keys is part of the test.
  assert any(not np.array_equal(a, b) for a, b in zip(reference_params, without_dropout))
  workdir = str(tmp_path / 'w')
  cli = functools.partial(_cli, cache_dir=tmp_path / 'jax_cache')
  # SIGKILL right after step 8's asynchronous save started (it may or may not have landed).
  r = cli(workdir, (8, 'SIGKILL'))
  assert r.returncode == -9, r.stderr[-3000:]
  # Restart, then a preemption notice (SIGTERM) after step 9: saves at the next step and exits.
  r = cli(workdir, (9, 'SIGTERM'))
  assert r.returncode == 75, r.stderr[-3000:]  # not 0: the run is not finished
  assert 'preempted: saved step 10' in r.stdout
  ckpt = train.make_checkpointer(config, workdir)
  try:
    assert ckpt.latest_step() == 10
  finally:
    ckpt.close()
  # SIGKILL again at step 11 (mid checkpoint interval: resumes from 10 and redoes 11).
  r = cli(workdir, (11, 'SIGKILL'))
  assert r.returncode == -9, r.stderr[-3000:]
  r = cli(workdir)
  assert r.returncode == 0, r.stderr[-3000:]
  _, state, meta = train.restore_state(config, workdir, 'latest')
  assert meta['step'] == 12 and meta['pipeline_position'] == 12
  assert_trees_bitwise_equal(state, uninterrupted.state)
  # Steps redone after a restart are logged once: the records match the uninterrupted run's.
  records = files.read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
  steps = [(r['split'], r['step']) for r in records]
  reference = files.read_jsonl(str(tmp_path / 'reference' / 'metrics.jsonl'))
  assert steps == [(r['split'], r['step']) for r in reference]


def test_modality_dropout_mask_rates_and_never_empty():
  mask = np.asarray(train.modality_dropout_mask(jax.random.PRNGKey(0), 20000, 2, 0.3))
  assert mask.shape == (20000, 2) and mask.any(axis=1).all()
  # P(present) = 0.7 + P(both dropped) * 1/2 = 0.7 + 0.09 / 2.
  np.testing.assert_allclose(mask.mean(axis=0), 0.745, atol=0.01)
  np.testing.assert_allclose((~mask).all(axis=1).mean(), 0.0)
  np.testing.assert_allclose(mask.all(axis=1).mean(), 0.49, atol=0.01)
  assert np.asarray(train.modality_dropout_mask(jax.random.PRNGKey(0), 100, 3, 0.0)).all()


def test_modality_dropout_mask_keeps_only_what_a_row_has():
  """Rows that lack a modality (a manifest's `present`): it is never shown, a row keeps one of
  those it has, and a row with one modality always keeps it."""
  rng = np.random.default_rng(0)
  available = rng.random((20000, 3)) < 0.6
  available[~available.any(axis=1), 1] = True
  mask = np.asarray(train.modality_dropout_mask(jax.random.PRNGKey(1), 20000, 3, 0.3,
                                                jnp.asarray(available)))
  assert not (mask & ~available).any() and mask.any(axis=1).all()
  single = available.sum(axis=1) == 1
  assert (mask[single] == available[single]).all()
  # Among rows with all three, each is hidden at the rate (plus the all-dropped fallback).
  full = available.all(axis=1)
  np.testing.assert_allclose(mask[full].mean(axis=0), 0.7 + 0.3**3 / 3, atol=0.015)
  assert (np.asarray(train.modality_dropout_mask(jax.random.PRNGKey(1), 20000, 3, 0.0,
                                                 jnp.asarray(available))) == available).all()


def test_modality_dropout_changes_training_and_is_validated(tmp_path):
  base = train.train_and_evaluate(tiny_config('size=tiny,steps=4'), str(tmp_path / 'a'))
  config = tiny_config('size=tiny,steps=4')
  config.train.modality_dropout = 0.5
  dropped = train.train_and_evaluate(config, str(tmp_path / 'b'))
  assert any(not np.array_equal(a, b) for a, b in zip(jax.tree.leaves(base.state.params),
                                                      jax.tree.leaves(dropped.state.params)))
  config.train.modality_dropout = 1.0
  with pytest.raises(config_utils.ConfigError, match='modality_dropout'):
    train.train_and_evaluate(config, str(tmp_path / 'c'))
