"""The adversarial objective: its losses, that each player gets only its own loss's gradient
and its own optimizer, the reconstruction evaluator's classifier and diversity scores, and a
GAN run killed with SIGKILL and resumed, bitwise equal to one that was not."""
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from crossmodal import config_utils
from crossmodal import evaluators
from crossmodal import objectives
from crossmodal import optim
from crossmodal import train
from crossmodal.evaluators import reconstruction
from crossmodal.models import model as model_lib
from conftest import REPO, SYNTHETIC, assert_trees_bitwise_equal, tiny_config


def _gan(loss='hinge'):
  obj = objectives.objectives_config(classification=1.0, adversarial=1.0)
  obj.adversarial.loss = loss
  model = model_lib.build_model(model_lib.default_model_config(dim=32), 10, objectives=obj)
  rng = np.random.default_rng(0)
  batch = {'image': rng.integers(0, 256, (4, 28, 28, 1), dtype=np.uint8),
           'audio': (0.1 * rng.normal(size=(4, 8000))).astype(np.float32),
           'label': np.array([1, 7, 3, 2])}
  variables = model.init({'params': jax.random.key(0), 'dropout': jax.random.key(1)}, batch)
  return model, obj, batch, variables


def test_adversarial_losses_by_hand():
  real, fake, for_g = jnp.array([2.0, 0.5]), jnp.array([-2.0, 0.5]), jnp.array([0.3, -1.0])
  d, g = objectives.adversarial_losses(real, fake, for_g, 'hinge')
  np.testing.assert_allclose(d, [0.0 + 0.0, 0.5 + 1.5])
  np.testing.assert_allclose(g, [-0.3, 1.0])
  d, g = objectives.adversarial_losses(real, fake, for_g, 'non_saturating')
  softplus = lambda x: np.log1p(np.exp(x))
  np.testing.assert_allclose(d, softplus(-np.array([2.0, 0.5])) + softplus(np.array([-2.0, 0.5])),
                             rtol=1e-6)
  np.testing.assert_allclose(g, softplus(-np.array([0.3, -1.0])), rtol=1e-6)


@pytest.mark.parametrize('loss', objectives.GAN_LOSSES)
def test_each_player_gets_only_its_own_gradient(loss):
  """The discriminator loss moves only the discriminator; the generator loss moves the
  generator and the audio encoder it reads, never the discriminator."""
  model, _, batch, variables = _gan(loss)

  def part(params, which):
    out, _ = model.apply({**variables, 'params': params}, batch, train=True,
                         rngs={'dropout': jax.random.key(2)}, mutable=['batch_stats'])
    d = out['discriminator']
    d_loss, g_loss = objectives.adversarial_losses(d['real'], d['fake'],
                                                   d['fake_for_generator'], loss)
    return (d_loss if which == 'd' else g_loss).mean()

  for which, moved in (('d', {'image_discriminator'}),
                       ('g', {'image_decoder', 'audio_encoder'})):
    grads = jax.grad(part)(variables['params'], which)
    norms = {k: float(optax.tree.norm(v)) for k, v in grads.items()}
    assert {k for k, n in norms.items() if n > 0} == moved, (which, norms)


def test_discriminator_has_its_own_optimizer():
  """One update: with the model's learning rate 0 only the discriminator moves, by Adam's
  first step (lr per coordinate with a non-zero gradient); the state holds both optimizers."""
  model, obj, batch, variables = _gan()
  params = variables['params']
  tx = optim.with_discriminator(optax.sgd(0.0), obj.adversarial)
  state = tx.init(params)
  assert set(state.inner_states) == {'model', 'discriminator'}

  def loss(p):
    out, _ = model.apply({**variables, 'params': p}, batch, train=True,
                         rngs={'dropout': jax.random.key(2)}, mutable=['batch_stats'])
    total, count = objectives.compute(obj, out, batch)['adversarial']
    return total / count

  grads = jax.grad(loss)(params)
  updates, _ = tx.update(grads, state, params)
  for name, sub in updates.items():
    step = np.concatenate([np.abs(np.ravel(x)) for x in jax.tree.leaves(sub)])
    if name == 'image_discriminator':
      assert step.max() == pytest.approx(obj.adversarial.lr, rel=1e-3)
    else:
      assert step.max() == 0.0, name


def test_diversity_by_hand():
  images = np.zeros((6, 2, 2, 1), np.float32)
  images[1] = 1.0  # class 0: two images 1 apart in every pixel; class 1: three equal ones
  labels = np.array([0, 0, 1, 1, 1, 2])  # class 2 has one image: no pair, skipped
  assert reconstruction.diversity(images, labels) == pytest.approx(0.5)
  assert reconstruction.diversity(images[2:5], labels[2:5]) == 0.0


def test_adversarial_config_errors(tmp_path):
  error = lambda match: pytest.raises(config_utils.ConfigError, match=match)
  obj = objectives.objectives_config(adversarial=1.0)
  obj.adversarial.loss = 'wasserstein'
  with error(r"adversarial.loss='wasserstein': valid choices: \('hinge', 'non_saturating'\)"):
    objectives.check_config(obj, ('image', 'audio'))
  obj.adversarial.loss = 'hinge'
  with error(r"adversarial: its generator is the reconstruction decoder, from .*source='audio'"):
    objectives.check_config(obj, ('image', 'text'))
  config = _gan_config()
  config.optim.accum_steps = 2
  with error('accum_steps=2: the adversarial objective updates its discriminator every step'):
    train.check_config(config)
  config = _gan_config()
  config.evaluators.reconstruction = evaluators.evaluator_config(
      'reconstruction', classifier='/nonexistent/run')
  with error(r"reconstruction.classifier: '/nonexistent/run' holds no run \(no config.json\)"):
    train.check_config(config)
  config.evaluators.reconstruction.classifier = str(tmp_path)
  config_utils.write_config(tiny_config(), str(tmp_path))  # an image+audio run
  with error(r"is a model of \('image', 'audio'\); the classifier must read the image alone"):
    train.check_config(config)


def _gan_config():
  config = tiny_config()
  config.objectives = objectives.objectives_config(classification=1.0, adversarial=1.0)
  config.train.checkpoint_every = 6
  return config


GAN_CONFIG = f"""
from crossmodal import config_utils, objectives
def get_config(arg=None):
  config = config_utils.load_config_file({SYNTHETIC!r} + ':size=tiny')
  config.objectives = objectives.objectives_config(classification=1.0, adversarial=1.0)
  config.train.checkpoint_every = 6
  return config
"""


def _gan_cli(config_path, workdir, interrupt=None):
  program = (['-m', 'crossmodal.main'] if interrupt is None else
             [os.path.join(REPO, 'tests', 'interrupt_at_step.py'), *map(str, interrupt)])
  return subprocess.run(
      [sys.executable, *program, f'--config={config_path}', f'--workdir={workdir}',
       '--mode=train'], cwd=REPO, capture_output=True, text=True, timeout=600)


@pytest.mark.slow
def test_gan_killed_and_resumed_is_bitwise_and_scored_by_a_classifier(tmp_path):
  """A GAN run SIGKILLed after step 7 (its step-6 checkpoint kept) and restarted ends with
  the uninterrupted run's state, bit for bit (both parameter sets and both optimizer
  states); its reconstruction evaluator then reads an independently trained image classifier."""
  config = _gan_config()
  reference = train.train_and_evaluate(config, str(tmp_path / 'reference'),
                                       final_checkpoint=None)
  config_path = tmp_path / 'gan_config.py'
  config_path.write_text(GAN_CONFIG)
  workdir = str(tmp_path / 'w')
  r = _gan_cli(config_path, workdir, (7, 'SIGKILL'))
  assert r.returncode == -9, r.stderr[-3000:]
  r = _gan_cli(config_path, workdir)
  assert r.returncode == 0, r.stderr[-3000:]
  _, state, meta = train.restore_state(config, workdir, 'latest')
  assert meta['step'] == config.train.num_steps
  assert_trees_bitwise_equal(state, reference.state)
  assert set(state.opt_state.inner_states) == {'model', 'discriminator'}
  # The classifier: an image-only run on the same images, trained independently.
  classifier_config = tiny_config('size=tiny,modalities=image')
  train.train_and_evaluate(classifier_config, str(tmp_path / 'classifier'))
  config.evaluators.reconstruction = evaluators.evaluator_config(
      'reconstruction', classifier=str(tmp_path / 'classifier'))
  result = train.evaluate(config, workdir, 'latest')['reconstruction']
  for key in ('classifier_accuracy', 'real/classifier_accuracy'):
    assert 0.0 <= result[key] <= 1.0
  assert result['diversity'] > 0 and result['real/diversity'] > 0


def test_conv_decoder_draws_the_target_shape_and_keeps_batch_statistics():
  """DCGAN's generator as the reconstruction decoder: [B, 28, 28, 1] in [0, 1], its BatchNorm
  statistics move in training only; a side not divisible by 4 is refused by name."""
  obj = objectives.objectives_config(classification=1.0, adversarial=1.0)
  obj.reconstruction.update(decoder='conv', hidden=(16,))
  model = model_lib.build_model(model_lib.default_model_config(dim=32), 10, objectives=obj)
  _, _, batch, _ = _gan()
  variables = model.init({'params': jax.random.key(0), 'dropout': jax.random.key(1)}, batch)
  assert 'norm_0' in variables['batch_stats']['image_decoder']
  out, updates = model.apply(variables, batch, train=True, rngs={'dropout': jax.random.key(2)},
                             mutable=['batch_stats'])
  images = np.asarray(out['reconstruction'])
  assert images.shape == (4, 28, 28, 1) and images.min() >= 0 and images.max() <= 1
  moved = jax.tree.map(lambda a, b: bool(np.any(a != b)),
                       updates['batch_stats']['image_decoder'],
                       variables['batch_stats']['image_decoder'])
  assert all(jax.tree.leaves(moved))
  bad = {**batch, 'image': np.zeros((4, 30, 30, 1), np.uint8)}
  with pytest.raises(ValueError, match='needs sides divisible by 4'):
    model.init({'params': jax.random.key(0), 'dropout': jax.random.key(1)}, bad)
