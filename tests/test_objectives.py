"""Objectives: the contrastive losses against a direct NumPy computation, global negatives on
8 simulated devices (pmap's all_gather and jit's sharded batch give the single-device loss and
gradient), the weighted combination (`objectives.total`, as the train and eval steps use it)
and validation."""
import json
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from crossmodal import config_utils
from crossmodal import files
from crossmodal import objectives
from crossmodal import train
from crossmodal.evaluators import classification
from conftest import REPO, synthetic_config, tiny_config


def _unit(x):
  return x / np.linalg.norm(x, axis=-1, keepdims=True)


def numpy_contrastive(a, b, labels, mask, loss, scale, margin, same_class):
  """Loops over queries: the textbook definitions, in float64."""
  a, b = _unit(np.float64(a)), _unit(np.float64(b))
  real = np.flatnonzero(mask)
  total = 0.0
  for queries, keys in ((a, b), (b, a)):
    for i in real:
      positives = [j for j in real if j == i or (same_class and labels[j] == labels[i])]
      sims = {j: float(queries[i] @ keys[j]) for j in real}
      if loss == 'infonce':
        logits = np.array([scale * sims[j] for j in real])
        log_z = np.log(np.exp(logits - logits.max()).sum()) + logits.max()
        total += 0.5 * np.mean([log_z - scale * sims[j] for j in positives])
      else:
        negatives = [j for j in real if j not in positives]
        hinge = [max(0.0, margin - sims[i] + sims[j]) for j in negatives]
        total += 0.5 * (np.mean(hinge) if hinge else 0.0)
  return total, float(len(real))


def _pairs():
  """12 random pairs of 5-d vectors, labels of 3 classes, and a mask with 2 padding examples."""
  rng = np.random.default_rng(0)
  a, b = rng.normal(size=(12, 5)), rng.normal(size=(12, 5))
  labels = rng.integers(0, 3, size=12)
  mask = np.ones(12, bool)
  mask[[3, 10]] = False
  return a, b, labels, mask


@pytest.mark.parametrize('loss', ['infonce', 'triplet'])
@pytest.mark.parametrize('same_class', [False, True])
def test_contrastive_matches_numpy(loss, same_class):
  a, b, labels, mask = _pairs()  # examples 3 and 10 are padding: neither query nor negative
  got = objectives.contrastive(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32),
                               loss=loss, scale=7.0, margin=0.3, labels=jnp.asarray(labels),
                               same_class_positives=same_class, mask=jnp.asarray(mask))
  want = numpy_contrastive(a, b, labels, mask, loss, 7.0, 0.3, same_class)
  np.testing.assert_allclose(float(got[0]), want[0], rtol=1e-5)
  assert float(got[1]) == want[1] == 10


def numpy_sigmoid(a, b, labels, mask, scale, bias, same_class):
  """SigLIP's loss as the paper writes it, looping over every pair of real examples in float64:
  sum_i sum_j -log sigmoid(z_ij (t x_i.y_j + b)) (training divides by the count |B|)."""
  a, b = _unit(np.float64(a)), _unit(np.float64(b))
  real = np.flatnonzero(mask)
  total = 0.0
  for i in real:
    for j in real:
      z = 1.0 if i == j or (same_class and labels[i] == labels[j]) else -1.0
      total += np.log1p(np.exp(-z * (scale * float(a[i] @ b[j]) + bias)))
  return total, float(len(real))


@pytest.mark.parametrize('same_class', [False, True])
@pytest.mark.parametrize('key_chunk', [objectives.SIGMOID_KEY_CHUNK, 5])
def test_sigmoid_matches_numpy(same_class, key_chunk):
  """Also when the keys are scored in chunks (5 of 12: a scan over 3 blocks, one padded)."""
  a, b, labels, mask = _pairs()  # examples 3 and 10 are padding: neither query nor key
  got = objectives.contrastive(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32),
                               loss='sigmoid', scale=7.0, bias=-3.0, labels=jnp.asarray(labels),
                               same_class_positives=same_class, mask=jnp.asarray(mask),
                               key_chunk=key_chunk)
  want = numpy_sigmoid(a, b, labels, mask, 7.0, -3.0, same_class)
  np.testing.assert_allclose(float(got[0]), want[0], rtol=1e-5)
  assert float(got[1]) == want[1] == 10


def test_infonce_is_low_when_pairs_align_and_ln_n_at_chance():
  x = np.eye(8, dtype=np.float32)
  aligned, _ = objectives.contrastive(jnp.asarray(x), jnp.asarray(x), scale=50.0)
  constant, _ = objectives.contrastive(jnp.ones((8, 4)), jnp.ones((8, 4)), scale=50.0)
  assert float(aligned) / 8 < 1e-6
  np.testing.assert_allclose(float(constant) / 8, np.log(8), rtol=1e-6)


def test_reconstruction_error_scales_uint8_targets():
  target = np.full((2, 4, 4, 1), 255, np.uint8)
  decoded = jnp.full((2, 4, 4, 1), 0.5)
  np.testing.assert_allclose(objectives.reconstruction_error(decoded, jnp.asarray(target)),
                             [0.25, 0.25])


def test_weights_and_validation():
  cfg = objectives.objectives_config(classification=0.0, contrastive=1.0, reconstruction=0.5)
  assert objectives.active(cfg) == ('contrastive', 'reconstruction')
  assert objectives.total(cfg, {'contrastive': 2.0, 'reconstruction': 4.0}) == 4.0
  assert objectives.weights(None) == {'classification': 1.0}
  base = synthetic_config()
  base.objectives = objectives.objectives_config(classification=0.0)
  with pytest.raises(config_utils.ConfigError, match='every weight is 0'):
    config_utils.validate(base)
  base.objectives = objectives.objectives_config(contrastive=1.0)
  base.objectives.contrastive.loss = 'hinge'
  base.objectives.contrastive.pair = ('audio', 'audio')
  base.objectives.contrastive.sigmoid_temperature = 0.0
  with pytest.raises(config_utils.ConfigError) as e:
    config_utils.validate(base)
  assert 'contrastive.loss' in str(e.value) and 'contrastive.pair' in str(e.value)
  assert 'contrastive.sigmoid_temperature' in str(e.value)
  with pytest.raises(config_utils.ConfigError, match='unknown objective'):
    objectives.objectives_config(vae=1.0)
  base.objectives = objectives.objectives_config(classification=0.0, contrastive=1.0)
  config_utils.validate(base)  # best_metric: tests/test_evaluators.py


def test_no_classification_metrics_without_a_trained_classifier():
  """An untrained classifier's accuracy would be noise in the records: it is left out."""
  confusion = np.array([[3, 1], [0, 4]])
  acc = {'confusion': confusion, 'losses': {'contrastive': [6.0, 3.0]}}
  only = classification.summarize(acc, objectives.objectives_config(classification=0.0,
                                                                   contrastive=1.0))
  assert only == {'num_examples': 8, 'loss': 2.0, 'loss_contrastive': 2.0}
  acc['losses']['classification'] = [3.0, 3.0]
  both = classification.summarize(acc, objectives.objectives_config(contrastive=1.0))
  assert both['accuracy'] == 7 / 8 and both['loss'] == 3.0 and both['loss_classification'] == 1.0


_EIGHT_DEVICE_SCRIPT = r'''
import json
import jax, jax.numpy as jnp, numpy as np
from crossmodal import objectives
assert jax.device_count() == 8, jax.devices()
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

rng = np.random.default_rng(0)
n, d = 32, 6
xa, xb = rng.normal(size=(n, 5)).astype(np.float32), rng.normal(size=(n, 7)).astype(np.float32)
labels = rng.integers(0, 4, size=n).astype(np.int32)
mask = np.ones(n, bool); mask[[5, 30]] = False
params = {'wa': rng.normal(size=(5, d)).astype(np.float32),
          'wb': rng.normal(size=(7, d)).astype(np.float32), 'scale': np.float32(4.0),
          'bias': np.float32(-1.0)}  # the sigmoid loss's
whole = objectives.SIGMOID_KEY_CHUNK
# (loss, same_class_positives, key_chunk): the sigmoid loss also with 3-key chunks, so the jit
# path and each of pmap's ring steps (4-example device blocks) scan over padded key chunks;
# the reference scores all keys at once.
cases = [(loss, same, whole) for loss in ('infonce', 'triplet', 'sigmoid')
         for same in (False, True)] + [('sigmoid', True, 3)]
out = {}
for loss, same, chunk in cases:
    def local(p, xa, xb, labels, mask, axis_name=None, key_chunk=chunk):
      return objectives.contrastive(xa @ p['wa'], xb @ p['wb'], loss=loss, scale=p['scale'],
                                    margin=0.2, labels=labels, same_class_positives=same,
                                    mask=mask, axis_name=axis_name, bias=p['bias'],
                                    key_chunk=key_chunk)
    def mean(p, *args, axis_name=None, key_chunk=chunk):
      s, c = local(p, *args, axis_name=axis_name, key_chunk=key_chunk)
      return s / c
    args = (xa, xb, labels, mask)
    ref_loss, ref_grad = jax.value_and_grad(  # one device, whole batch, unchunked
        lambda p, *a: mean(p, *a, key_chunk=whole))(params, *args)

    # jit with the batch sharded over the 8 devices: the global-array semantics.
    mesh = Mesh(np.array(jax.devices()), ('data',))
    shard = NamedSharding(mesh, P('data'))
    sharded = [jax.device_put(x, shard) for x in args]
    jit_loss, jit_grad = jax.jit(jax.value_and_grad(mean))(params, *sharded)

    # pmap: each device its 4 queries against all 32 keys (all_gather); sums psum'd.
    split = [x.reshape((8, n // 8) + x.shape[1:]) for x in args]
    def device_step(p, *a):
      s, c = local(p, *a, axis_name='data')
      total_s, total_c = jax.lax.psum(s, 'data'), jax.lax.psum(c, 'data')
      grad = jax.grad(lambda q: local(q, *a, axis_name='data')[0])(p)
      return total_s / total_c, jax.lax.psum(grad, 'data'), total_c
    pm_loss, pm_grad_sum, count = jax.pmap(device_step, axis_name='data', in_axes=(None,) + (0,) * 4)(params, *split)
    jax.block_until_ready(pm_loss)
    pm_grad = jax.tree.map(lambda g: g[0] / count[0], pm_grad_sum)
    def diff(g1, g2):
      return max(float(np.max(np.abs(np.asarray(x) - np.asarray(y)))) for x, y in
                 zip(jax.tree.leaves(g1), jax.tree.leaves(g2)))
    out[f'{loss}_{same}' + ('' if chunk == whole else f'_chunk{chunk}')] = {
        'ref': float(ref_loss), 'jit': float(jit_loss), 'pmap': float(pm_loss[0]),
        'jit_grad': diff(ref_grad, jit_grad), 'pmap_grad': diff(ref_grad, pm_grad),
        'grad_scale': max(float(np.max(np.abs(np.asarray(x)))) for x in jax.tree.leaves(ref_grad))}
    if loss == 'sigmoid':  # what one device's gradient program holds (per-device shapes)
      grad_fn = jax.grad(lambda p, *a: local(p, *a, axis_name='data')[0])
      jaxpr = str(jax.make_jaxpr(jax.pmap(grad_fn, axis_name='data',
                                          in_axes=(None,) + (0,) * 4))(params, *split))
      m = n // 8
      out[f'{loss}_{same}' + ('' if chunk == whole else f'_chunk{chunk}')]['ring'] = {
          'ppermute': 'ppermute' in jaxpr, 'all_gather': 'all_gather' in jaxpr,
          'block': f'f32[{m},{min(m, chunk)}]' in jaxpr,
          'wider': any(f'f32[{m},{w}]' in jaxpr for w in range(min(m, chunk) + 1, n + 1)
                       if w not in (5, 7, d))}  # [m, 5|7|d]: inputs, embeddings
print(json.dumps(out))
'''


@pytest.mark.slow
def test_global_negatives_on_8_devices():
  """The pmap path (each device's queries against the all_gather'ed global batch; for the
  sigmoid loss, against each device's keys in turn round the ppermute ring) and the jit path
  (sharded global arrays) give the single-device loss and gradient, with padding."""
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=8',
         'JAX_PLATFORMS': 'cpu'}
  proc = subprocess.run([sys.executable, '-c', _EIGHT_DEVICE_SCRIPT], env=env, cwd=REPO,
                        capture_output=True, text=True, timeout=600)
  assert proc.returncode == 0, proc.stderr[-3000:]
  results = json.loads(proc.stdout.strip().splitlines()[-1])
  assert len(results) == 7
  for name, r in results.items():
    assert r['grad_scale'] > 1e-3, name  # the comparison below is not of zeros
    np.testing.assert_allclose([r['jit'], r['pmap']], [r['ref']] * 2, rtol=1e-5, err_msg=name)
    assert r['jit_grad'] < 1e-5 * max(1.0, r['grad_scale']), (name, r)
    assert r['pmap_grad'] < 1e-5 * max(1.0, r['grad_scale']), (name, r)
    if name.startswith('sigmoid'):  # keys came round the ring, one [n, min(n, chunk)] block
      assert r['ring'] == {'ppermute': True, 'all_gather': False, 'block': True,
                           'wider': False}, (name, r)


@pytest.mark.parametrize('loss', ['infonce', 'sigmoid', 'triplet'])
def test_model_and_loss_for_each_contrastive_loss(loss):
  """The model's heads and `compute` agree for every loss under the default config
  (learn_temperature=True): the triplet loss has no temperature, so the model makes no
  logit_scale for it and `compute` must not ask for one; only the sigmoid loss has a bias,
  and it starts from SigLIP's values (log-temperature log 10, so t = 10, and bias -10)."""
  from crossmodal.models import model as model_lib  # pylint: disable=import-outside-toplevel
  config = tiny_config()
  cfg = objectives.objectives_config(classification=0.0, contrastive=1.0)
  cfg.contrastive.loss = loss
  model = model_lib.build_model(config.model, 4, objectives=cfg)
  batch = _tiny_batch()
  variables = model.init(jax.random.PRNGKey(0), batch)
  out = model.apply(variables, batch)
  assert ('logit_scale' in out) == (loss != 'triplet')
  assert ('logit_bias' in out) == (loss == 'sigmoid')
  if loss == 'sigmoid':
    params = variables['params']
    assert params['logit_scale'] == np.float32(np.log(10.0))
    assert params['logit_bias'] == np.float32(-10.0)
    np.testing.assert_allclose(out['logit_scale'], 10.0, rtol=1e-6)
    assert out['logit_bias'] == -10.0
  s, c = objectives.compute(cfg, out, batch)['contrastive']
  assert c == 6 and np.isfinite(s) and s > 0
  if loss == 'sigmoid':  # the model's scale and bias are the ones the loss uses
    want = numpy_sigmoid(out['embeddings']['audio'], out['embeddings']['image'],
                         batch['label'], np.ones(6, bool), float(out['logit_scale']), -10.0,
                         False)
    np.testing.assert_allclose(float(s), want[0], rtol=1e-5)


def _tiny_batch(size=6):
  rng = np.random.default_rng(0)
  return {'image': rng.integers(0, 256, (size, 16, 16, 1)).astype(np.uint8),
          'audio': rng.normal(size=(size, 800)).astype(np.float32),
          'label': np.arange(size, dtype=np.int32) % 4}


def test_only_the_sigmoid_loss_adds_a_bias_to_the_parameter_tree():
  """Existing configs' parameter trees gain no leaf: InfoNCE adds only `logit_scale` to the
  classifier's tree, the triplet loss (and a fixed temperature) nothing; the sigmoid loss adds
  `logit_scale` and `logit_bias`, both scalars (none when its temperature is fixed)."""
  from crossmodal.models import model as model_lib  # pylint: disable=import-outside-toplevel
  config, batch = tiny_config(), _tiny_batch()

  def tree(loss=None, learn=True):
    cfg = None
    if loss is not None:
      cfg = objectives.objectives_config(classification=0.0, contrastive=1.0)
      cfg.contrastive.update(loss=loss, learn_temperature=learn)
    model = model_lib.build_model(config.model, 4, objectives=cfg)
    shapes = jax.eval_shape(model.init, jax.random.PRNGKey(0), batch)
    return {jax.tree_util.keystr(p): (x.shape, x.dtype)
            for p, x in jax.tree_util.tree_flatten_with_path(shapes)[0]}

  base = tree()
  scalar = ((), jnp.float32)
  scale, bias = "['params']['logit_scale']", "['params']['logit_bias']"
  assert scale not in base and bias not in base
  assert tree('infonce') == {**base, scale: scalar}
  assert tree('triplet') == tree('infonce', learn=False) == base
  assert tree('sigmoid') == {**base, scale: scalar, bias: scalar}
  assert tree('sigmoid', learn=False) == base


def test_sigmoid_config_trains(tmp_path):
  """A tiny audio-image run with the sigmoid loss alone: finite losses, and the learned
  temperature and bias move from their initial values."""
  config = tiny_config()
  config.objectives = objectives.objectives_config(classification=0.0, contrastive=1.0)
  config.objectives.contrastive.update(loss='sigmoid', pair=('audio', 'image'))
  config.train.update(num_steps=4, log_every=2, checkpoint_every=4,
                      best_metric='validation/loss')  # no classifier: no accuracy
  for evaluator in config.evaluators.values():
    evaluator.every = 4
  result = train.train_and_evaluate(config, str(tmp_path / 'w'))
  assert result.step == 4
  params = result.state.params
  assert float(params['logit_bias']) != -10.0
  assert float(params['logit_scale']) != np.float32(np.log(10.0))
  records = [r for r in files.read_jsonl(str(tmp_path / 'w' / 'metrics.jsonl'))
             if r['split'] == 'train']
  assert records and all(np.isfinite(r['loss']) and 'accuracy' not in r for r in records)
  assert np.isfinite(result.metrics['validation']['loss_contrastive'])
