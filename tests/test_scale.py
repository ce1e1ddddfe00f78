"""The switches for scale (models/attention.py): attention through jax.nn.dot_product_attention,
and per-layer rematerialisation, on every transformer stack (ViT, AST, text, fusion layers)."""
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from crossmodal.models import encoders as encoders_lib
from crossmodal.models import model as model_lib
from crossmodal.models.attention import MultiHeadAttention, TransformerLayer
from conftest import TINY_ENCODERS

B, NQ, NK, D, H = 3, 4, 6, 8, 2


def _inputs():
  rng = np.random.default_rng(0)
  q = jnp.asarray(rng.normal(size=(B, NQ, D)), jnp.float32)
  kv = jnp.asarray(rng.normal(size=(B, NK, 5)), jnp.float32)
  key_mask = rng.uniform(size=(B, NK)) > 0.4
  key_mask[0] = [True, False, True, False, False, True]
  key_mask[2] = False  # no valid key at all: output rows are exactly zero on both paths
  query_mask = np.ones((B, NQ), bool)
  query_mask[1, 3] = False
  return q, kv, jnp.asarray(key_mask), jnp.asarray(query_mask)


@pytest.fixture
def fast_prng_for_this_test():
  """conftest's `fast_prng` ('rbg' keys) for one test, not the rest of the module: the model
  tests below compare two programs on one device, and neither the attention switch nor remat
  depends on the PRNG implementation (remat recomputes dropout masks from the same key with
  either; a different mask would fail the comparison, not pass it). threefry's dropout alone
  took ~25 s of XLA compile per training-mode gradient here. The base.py run keeps the default."""
  previous = jax.config.jax_default_prng_impl
  jax.config.update('jax_default_prng_impl', 'rbg')
  yield
  jax.config.update('jax_default_prng_impl', previous)


def _close(a, b, tol=1e-5):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=tol, atol=tol)


def test_dot_product_attention_equals_einsum_with_masks_gradients_too():
  q, kv, key_mask, query_mask = _inputs()
  variables = MultiHeadAttention(H).init(jax.random.key(1), q, kv, key_mask=key_mask)

  def run(attention, variables, q, kv):
    out, _ = MultiHeadAttention(H, attention=attention).apply(
        variables, q, kv, key_mask=key_mask, query_mask=query_mask)
    return out

  def loss(attention, variables, q, kv):
    return jnp.sum(jnp.sin(run(attention, variables, q, kv)))

  ref, fused = run('einsum', variables, q, kv), run('dot_product', variables, q, kv)
  _close(fused, ref)
  assert np.all(np.asarray(fused)[2] == 0) and np.all(np.asarray(fused)[1, 3] == 0)
  grads = {a: jax.grad(lambda *x, a=a: loss(a, *x), argnums=(0, 1, 2))(variables, q, kv)
           for a in ('einsum', 'dot_product')}
  _close(grads['dot_product'], grads['einsum'])
  assert np.abs(np.asarray(grads['einsum'][1])).max() > 1e-3  # the comparison is not of zeros


@pytest.mark.parametrize('combine', ['residual', 'concat_proj'])
def test_dot_product_layer_equals_einsum_and_still_returns_weights(combine):
  q, kv, key_mask, query_mask = _inputs()
  kv = kv[..., :1].repeat(D, -1)  # contexts as wide as the queries
  layer = TransformerLayer(H, mlp_ratio=2, combine=combine, dropout=0.1)
  variables = layer.init(jax.random.key(2), q, [kv], mask=query_mask, context_masks=[key_mask])
  outs = {a: TransformerLayer(H, mlp_ratio=2, combine=combine, attention=a).apply(
      variables, q, [kv], mask=query_mask, context_masks=[key_mask], return_weights=True)
          for a in ('einsum', 'dot_product')}
  _close(outs['dot_product'], outs['einsum'])  # the weights too (einsum path on request)


def _tiny_model_config(attention='einsum', remat='none', modalities=('image', 'audio', 'text')):
  cfg = model_lib.default_model_config(modalities, 'crossattn', dim=16,
                                       encoders={'image': 'vit', 'audio': 'ast'}, head=())
  for (m, t), fields in TINY_ENCODERS.items():
    if m in cfg.encoders and cfg.encoders[m].type == t:
      cfg.encoders[m].update(fields)
  cfg.fusion.update(num_layers=1, num_heads=2, mlp_ratio=2, dropout=0.0)
  cfg.update(attention=attention, remat=remat)
  return cfg


def _batch(modalities=('image', 'audio', 'text')):
  rng = np.random.default_rng(3)
  text = rng.integers(1, 200, size=(4, 12)).astype(np.int32)
  text[:, 9:] = 0  # padding, masked in the text stack and as fusion keys
  batch = {'image': jnp.asarray(rng.integers(0, 256, (4, 16, 16, 1)), jnp.uint8),
           'audio': jnp.asarray(rng.normal(size=(4, 8000)), jnp.float32),
           'text': jnp.asarray(text)}
  return {m: batch[m] for m in modalities}


def _loss_and_grads(cfg, variables=None, train=False):
  model = model_lib.build_model(cfg, num_classes=5)
  batch, labels = _batch(tuple(cfg.modalities)), jnp.arange(4) % 5
  present = jnp.array([[1, 1, 1], [1, 0, 1], [1, 1, 0], [0, 1, 1]], bool)[:, :len(batch)]
  if variables is None:
    variables = model.init(jax.random.key(0), batch, present)

  def loss(params):
    out = model.apply({**variables, 'params': params}, batch, present, train=train,
                      rngs={'dropout': jax.random.key(5)})
    logp = jax.nn.log_softmax(out['logits'])
    return -jnp.mean(jnp.take_along_axis(logp, labels[:, None], 1))
  value, grads = jax.jit(jax.value_and_grad(loss))(variables['params'])
  return variables, value, grads


@pytest.mark.usefixtures('fast_prng_for_this_test')
def test_model_attention_switch_gives_the_same_loss_and_gradients():
  """ViT, text and fusion stacks (the AST's trains with dot_product in the base.py test)."""
  modalities = ('image', 'text')
  variables, ref, ref_grads = _loss_and_grads(_tiny_model_config('einsum', modalities=modalities))
  _, value, grads = _loss_and_grads(_tiny_model_config('dot_product', modalities=modalities),
                                    variables)
  _close(value, ref)
  _close(grads, ref_grads)
  assert abs(float(ref)) > 0.1


_REMAT_REFERENCE = {}


@pytest.mark.usefixtures('fast_prng_for_this_test')
@pytest.mark.parametrize('remat', ['full', 'dots', 'dots_no_batch'])
def test_remat_keeps_parameters_losses_and_gradients(remat):
  """Same parameter tree (paths and init), same loss and gradients, in training mode with
  dropout (the recomputed forward pass draws the same masks). ViT, text and fusion stacks
  here; the AST stack, the same `_transformer` code, trains with remat in the base.py test
  (audio features make this compile slowly)."""
  modalities = ('image', 'text')
  base, remat_cfg = (_tiny_model_config(modalities=modalities),
                     _tiny_model_config(remat=remat, modalities=modalities))
  for cfg in (base, remat_cfg):
    cfg.fusion.dropout = 0.1
    cfg.encoders.text.dropout = 0.1
  if not _REMAT_REFERENCE:
    _REMAT_REFERENCE['run'] = _loss_and_grads(base, train=True)
  variables, ref, ref_grads = _REMAT_REFERENCE['run']
  fresh = model_lib.build_model(remat_cfg, 5).init(jax.random.key(0), _batch(modalities))
  assert jax.tree.structure(fresh) == jax.tree.structure(variables)
  _close(fresh, variables, tol=0)
  _, value, grads = _loss_and_grads(remat_cfg, variables, train=True)
  _close(value, ref, tol=1e-6)
  _close(grads, ref_grads, tol=1e-6)


def test_remat_recomputes_each_layer_in_the_backward_pass():
  """Each layer is a checkpoint in the gradient's program and XLA counts the recomputed
  forward pass in its cost analysis. (XLA's CPU memory analysis shows almost no saving from
  remat, docs/architecture.md "Scale", so memory is not asserted here.)"""
  def analyse(remat):
    cfg = model_lib.default_model_config(('image',), 'concat', dim=64, encoders={'image': 'vit'},
                                         head=())
    cfg.encoders.image.update(patch_size=4, depth=2, num_heads=4)
    cfg.remat = remat
    model = model_lib.build_model(cfg, num_classes=10)
    batch = {'image': jnp.zeros((16, 32, 32, 1), jnp.uint8)}
    variables = jax.eval_shape(lambda: model.init(jax.random.key(0), batch))
    grad = jax.grad(lambda p: model.apply({'params': p}, batch)['logits'].sum())
    jaxpr = str(jax.make_jaxpr(grad)(variables['params']))
    cost = jax.jit(grad).lower(variables['params']).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return jaxpr.count('remat'), cost['flops']  # jax.checkpoint's primitive
  (none_checkpoints, none_flops), (full_checkpoints, full_flops) = analyse('none'), analyse('full')
  assert (none_checkpoints, full_checkpoints) == (0, 2)  # one per layer
  assert 1.1 * none_flops < full_flops < 2 * none_flops  # the layers' forward pass again


def test_bad_attention_and_remat_are_config_errors():
  from crossmodal import schema  # pylint: disable=import-outside-toplevel
  cfg = _tiny_model_config()
  cfg.update(attention='flash', remat='some')
  with pytest.raises(schema.ConfigError) as e:
    model_lib.check_config(cfg)
  assert 'attention' in str(e.value) and 'dot_product' in str(e.value)
  assert 'remat' in str(e.value) and 'dots_no_batch' in str(e.value)


@pytest.mark.slow
def test_base_config_tiny_trains_the_same_with_remat_and_dot_product_attention(tmp_path):
  """experiments/base.py at size=tiny (the base towers' code on synthetic data of their kind):
  the remat and attention switches change memory and kernels, not the training losses.

  The first run is also base.py's "trains a few steps" test (tests/test_experiments.py leaves
  base.py to this one rather than train it a third time): its TEST_ARG, the final evaluation
  of every evaluator on the best checkpoint, and test_experiments' checks of the result."""
  import os  # pylint: disable=import-outside-toplevel
  from crossmodal import config_utils, files, train  # pylint: disable=import-outside-toplevel
  from conftest import REPO  # pylint: disable=import-outside-toplevel
  path = os.path.join(REPO, 'experiments', 'base.py')
  test_arg = config_utils.load_module(path, 'experiment_base').TEST_ARG
  assert test_arg == 'size=tiny'  # whose default is 4 steps: steps=4 below changes nothing
  losses = {}
  for arg in ('size=tiny,steps=4', 'size=tiny,steps=4,remat=dots,attention=dot_product'):
    config = config_utils.load_config_file(path + ':' + arg)
    workdir = str(tmp_path / arg.replace(',', '_').replace('=', '-'))
    first = not losses
    result = train.train_and_evaluate(config, workdir, final_checkpoint='best' if first else None)
    records = files.read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
    losses[arg] = [r['loss'] for r in records if r['split'] in ('train', 'validation')]
    if first:  # test_experiments.test_experiment_trains_a_few_steps' checks
      assert result.step == 4
      train_losses = [r['loss'] for r in records if r['split'] == 'train']
      assert len(train_losses) == 2 and np.all(np.isfinite(train_losses))  # log_every=2
      for name in ('validation', 'test'):
        assert result.metrics[name]['num_examples'] > 0
        assert np.isfinite(result.metrics[name]['loss'])
      evaluated = {r['split'] for r in records}
      for name in config.evaluators:  # every configured evaluator ran on the best checkpoint
        assert f'eval_{name}' in evaluated, (name, sorted(evaluated))
  a, b = losses.values()
  assert len(a) == len(b) >= 3
  np.testing.assert_allclose(b, a, rtol=1e-5)


def test_dot_product_with_attention_dropout_says_the_weights_are_not_dropped(caplog):
  cfg = _tiny_model_config('dot_product', modalities=('image', 'text'))
  cfg.fusion.dropout = 0.1
  with caplog.at_level('WARNING'):
    model_lib.build_model(cfg, num_classes=5)
  assert 'drops no attention weights' in caplog.text and 'config.model.fusion' in caplog.text
  caplog.clear()
  cfg.fusion.dropout = 0.0
  with caplog.at_level('WARNING'):
    model_lib.build_model(cfg, num_classes=5)
  assert 'drops no attention weights' not in caplog.text
