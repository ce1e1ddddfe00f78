"""Evaluators: retrieval ranks on hand-made cases, the robustness summaries against MultiBench's
definitions, the noise corruptions, that a missing modality removes its information, every
evaluator end to end on a tiny synthetic run (records in metrics.jsonl, pictures on disk), their
config errors, and that a new evaluator is one class plus one registry entry (in the loop, at
the end, and as best_metric)."""
import os

import jax
import ml_collections
import numpy as np
import pytest

from crossmodal import config_utils
from crossmodal import evaluators
from crossmodal import files
from crossmodal import objectives
from crossmodal import train
from crossmodal.evaluators import attention
from crossmodal.evaluators import common
from crossmodal.evaluators import retrieval
from crossmodal.evaluators import robustness
from crossmodal.evaluators import zero_shot
from crossmodal.data import noise
from crossmodal.models import text as text_lib
from conftest import REPO, tiny_config

# The evaluators never depend on the PRNG implementation (their noise is numpy's), and nothing
# here compares across device counts: the training runs they evaluate use rbg keys, whose
# dropout compiles in seconds where threefry's took ~30 s per crossattn train step.
pytestmark = pytest.mark.usefixtures('fast_prng')  # tests/conftest.py


def test_retrieval_ranks_hand_made():
  # Keys k0..k3 on the unit circle at 0, 90, 180, 270 degrees, classes [0, 1, 0, 1].
  keys = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])  # exact ties
  queries = np.stack([keys[0], keys[2], keys[1] * 2.0 + keys[0] * 0.1, keys[3]])
  labels = np.array([0, 1, 0, 1])
  instance, by_class = retrieval.ranks(queries, keys, labels, labels, block=3)
  # q1 = k2: similarities [-1, 0, 1, 0]; its own key k1 (0) comes after k2 and after k3, which
  # ties with it (ties count against the query): rank 3. q2 ~ k1: [.05, 1, -.05, -1]; own k2
  # after k1 and k0: rank 3.
  np.testing.assert_array_equal(instance, [1, 3, 3, 1])
  # By class: q1 (class 1): best class-1 key scores 0 (k1, k3), behind k2: rank 2. q2 (class 0):
  # best class-0 key k0 (.05), behind k1: rank 2.
  np.testing.assert_array_equal(by_class, [1, 2, 2, 1])
  summary = retrieval.summarize(instance, by_class, ks=(1, 2))
  assert summary['instance/recall@1'] == 0.5 and summary['instance/recall@2'] == 0.5
  assert summary['instance/median_rank'] == 2.0
  assert summary['class/recall@1'] == 0.5 and summary['class/recall@2'] == 1.0


def test_retrieval_ranks_blocks_do_not_change_the_result():
  rng = np.random.default_rng(0)
  q, k = rng.normal(size=(50, 4)), rng.normal(size=(50, 4))
  labels = rng.integers(0, 5, size=50)
  whole = retrieval.ranks(q, k, labels, labels, block=1000)
  blocked = retrieval.ranks(q, k, labels, labels, block=7)
  for a, b in zip(whole, blocked):
    np.testing.assert_array_equal(a, b)
  # Brute force: rank of own key, ties counted against the query.
  sims = (q / np.linalg.norm(q, axis=1, keepdims=True)) @ (
      k / np.linalg.norm(k, axis=1, keepdims=True)).T
  want = [1 + sum(sims[i, j] >= sims[i, i] for j in range(50) if j != i) for i in range(50)]
  np.testing.assert_array_equal(whole[0], want)
  # By class: position of the first same-class key, ties ordered non-hits first.
  want = [1 + [labels[j] == labels[i] for j in sorted(
      range(50), key=lambda j: (-sims[i, j], labels[j] == labels[i]))].index(True)
          for i in range(50)]
  np.testing.assert_array_equal(whole[1], want)


def test_chance_class_recall():
  assert retrieval.chance_class_recall(np.arange(10)) == pytest.approx(0.1)
  assert retrieval.chance_class_recall(np.array([0, 0, 0, 1])) == pytest.approx(0.625)


def test_robustness_summaries():
  levels = [0.0, 0.5, 1.0]
  assert robustness.relative_robustness(levels, [1.0, 1.0, 1.0]) == 1.0
  assert robustness.relative_robustness(levels, [0.8, 0.6, 0.2]) == pytest.approx(
      0.5 * (0.7 + 0.4))
  # MultiBench: sum of f - (LF + f0 - LF0).
  assert robustness.effective_robustness([0.9, 0.7, 0.5], [0.8, 0.5, 0.2]) == pytest.approx(
      (0.9 - 0.9) + (0.7 - 0.6) + (0.5 - 0.3))


@pytest.mark.parametrize('modality,kind', [(m, k) for m, ks in noise.NOISES.items() for k in ks])
def test_noise_levels(modality, kind):
  rng = np.random.default_rng(1)
  if modality == 'image':
    x = rng.integers(0, 256, size=(3, 12, 12, 1)).astype(np.uint8)
  else:
    x = rng.normal(size=(3, 400)).astype(np.float32)
  clean = noise.corrupt(x, modality, kind, 0.0, np.random.default_rng(0))
  np.testing.assert_array_equal(clean, x)
  assert clean.dtype == x.dtype
  t = noise.make_transform(modality, kind, 0.6, seed=3)
  a, b = t({modality: x, 'label': 0}, 5), t({modality: x, 'label': 0}, 5)
  np.testing.assert_array_equal(a[modality], b[modality])  # reproducible
  assert not np.array_equal(a[modality], x)
  if kind == 'rotation':  # 180-degree turn at level 1 on a centred square: same pixels, flipped
    return
  far = noise.corrupt(x, modality, kind, 1.0, np.random.default_rng(0)).astype(np.float64)
  if far.std() == 0:  # constant output (all audio dropped, or zero contrast): nothing left
    return
  corr = np.corrcoef(far.ravel(), x.astype(np.float64).ravel())[0, 1]
  assert corr < 0.6, corr  # level 1 keeps little of the signal


def test_noise_rejects_bad_kind_and_level():
  with pytest.raises(ValueError, match='valid choices'):
    noise.make_transform('audio', 'rotation', 0.5)
  with pytest.raises(ValueError, match=r'\[0, 1\]'):
    noise.make_transform('image', 'gaussian', 1.5)


def _tiny_config(fusion='concat', evals=('retrieval', 'robustness'), **weights):
  config = tiny_config(f'size=tiny,fusion={fusion}')
  config.objectives = objectives.objectives_config(**weights)
  for n in evals:
    config.evaluators[n] = evaluators.evaluator_config(n)
  if 'robustness' in evals:
    config.evaluators.robustness.levels = (0.0, 0.5, 1.0)
  return config


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  """A tiny concat model trained with every objective: (config, workdir)."""
  config = _tiny_config(evals=('retrieval', 'robustness', 'reconstruction'),
                        contrastive=1.0, reconstruction=1.0, aux_classification=0.5)
  workdir = str(tmp_path_factory.mktemp('trained') / 'w')
  train.train_and_evaluate(config, workdir)
  return config, workdir


@pytest.mark.slow
def test_missing_modality_removes_its_information(trained):
  """With the image hidden by the `present` mask, predictions do not depend on the image."""
  run, state, _ = train.restore_state(*trained, 'latest')
  predict = run.engine.bind(run.strategy.put_state(state))
  over = lambda **kw: predict.over(select, run.batches('test'), **kw)
  select = lambda out: {'logits': out['logits']}
  hide = lambda size: np.stack([np.zeros(size, bool), np.ones(size, bool)], 1)  # (image, audio)
  scramble = lambda batch, i: {**batch, 'image': np.random.default_rng(i).integers(
      0, 256, batch['image'].shape).astype(np.uint8)}
  hidden = over(present_fn=hide)
  hidden_scrambled = over(transform=scramble, present_fn=hide)
  np.testing.assert_allclose(hidden['logits'], hidden_scrambled['logits'], atol=1e-6)
  shown_scrambled = over(transform=scramble)
  assert np.abs(shown_scrambled['logits'] - hidden_scrambled['logits']).max() > 1e-3


@pytest.mark.slow
def test_evaluators_end_to_end(trained):
  """train_and_eval with every objective; then --mode=eval's path writes each evaluator's
  record and pictures."""
  config, workdir = trained
  results = train.evaluate(config, workdir, 'latest')
  assert set(results) == {'validation', 'test', 'retrieval', 'robustness', 'reconstruction'}
  for key in ('loss_contrastive', 'loss_reconstruction', 'loss_aux_classification'):
    assert np.isfinite(results['test'][key])
  r = results['retrieval']
  assert r['num_examples'] == 40 and r['chance/class_recall@1'] == pytest.approx(0.1)
  assert 1 <= r['audio_to_image/class/median_rank'] <= 40
  rob = results['robustness']
  assert rob['levels'] == [0.0, 0.5, 1.0]
  assert rob['image_gaussian/accuracy'][0] == rob['clean/accuracy'] == results['test']['accuracy']
  assert {'missing_image/accuracy', 'missing_audio/accuracy', 'audio/relative_robustness'} <= set(rob)
  rec = results['reconstruction']
  assert os.path.exists(rec['picture']) and rec['mse'] > 0
  assert 0 <= rec['nearest_class_mean_accuracy'] <= 1
  assert 0 <= rec['real/nearest_class_mean_accuracy'] <= 1
  records = files.read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
  splits = {r['split'] for r in records}
  assert {'eval_retrieval', 'eval_robustness', 'eval_reconstruction'} <= splits
  train_records = [r for r in records if r['split'] == 'train']
  assert 'temperature' in train_records[-1] and 'loss_contrastive' in train_records[-1]


@pytest.mark.slow
def test_attention_maps_and_pooled_vectors_under_crossattn(tmp_path):
  """An attention fusion with a contrastive objective computes pooled vectors after all (and
  the attention evaluator draws the maps); without one, retrieval is refused before training.
  The streams evaluator's missing-modality accuracy is the robustness evaluator's, and a
  missing modality's stream block is exactly zero (the premise of its decomposition)."""
  config = _tiny_config(fusion='crossattn', evals=('attention', 'retrieval', 'streams',
                                                   'robustness'), contrastive=1.0)
  config.evaluators.robustness.noises = {}
  workdir = str(tmp_path / 'w')
  # Every evaluator's final run on the best checkpoint: the code of train.evaluate (--mode=eval,
  # run.evaluate with prefix 'eval_'), whose own restore is covered by the end-to-end test above;
  # calling it here again rebuilt and recompiled the crossattn model for nothing new.
  results = train.train_and_evaluate(config, workdir).final
  assert results['attention']['maps'] > 0 and os.path.exists(results['attention']['picture'])
  assert results['retrieval']['num_examples'] == 40
  streams, rob = results['streams'], results['robustness']
  for m in ('image', 'audio'):
    assert streams[f'missing_{m}/accuracy'] == pytest.approx(rob[f'missing_{m}/accuracy'])
    for key in (f'missing_{m}/own_block_zeroed/accuracy', f'missing_{m}/keys_masked/accuracy',
                f'probe_{m}/accuracy'):
      assert 0 <= streams[key] <= 1, key
  assert {'missing_image/probe_audio/accuracy', 'missing_audio/probe_image/accuracy'} <= set(
      streams)
  run, state, _ = train.restore_state(config, workdir, 'best')
  predict = run.engine.bind(run.strategy.put_state(state))
  hide = lambda size: np.stack([np.zeros(size, bool), np.ones(size, bool)], 1)
  fused = predict.over(lambda out: {'fused': out['fused']}, run.batches('test'),
                       present_fn=hide)['fused']
  width = streams['block_width']
  assert fused.shape[1] == 2 * width
  assert np.all(fused[:, :width] == 0) and np.abs(fused[:, width:]).max() > 0
  config.objectives = objectives.objectives_config()
  with pytest.raises(config_utils.ConfigError, match='retrieval: .*no pooled vector'):
    train.check_config(config)


def test_attention_axes_follow_the_fusion_names():
  # crossattn: 'source->target', the target's tokens are the queries (models/fusion.py).
  assert attention.token_axes('cross_1/audio->image') == ('image', 'audio')
  assert attention.token_axes('self_0/audio') == ('audio', 'audio')
  assert attention.token_axes('layer_0/image') == ('image (+ bottleneck)',) * 2
  assert attention.token_axes('layer_0') == ('all modalities',) * 2


def test_evaluator_config_errors():
  config = _tiny_config()
  model = train.build_model(config, 10, None)
  text_model = train.build_model(
      tiny_config('size=tiny,modalities=image+text'), 10, None)
  build = lambda evals, m=model, objectives=None: evaluators.build_all(
      ml_collections.ConfigDict(evals), m, objectives)
  error = lambda match: pytest.raises(config_utils.ConfigError, match=match)
  with error(r"config.evaluators.fid.type='fid': unknown evaluator; valid choices: \['attention'"):
    build({'fid': {}})
  with error(r"config.evaluators.retrieval: unknown option\(s\) \['k'\]; valid options: "
             r"\['block', 'every', 'ks', 'pair', 'picture_queries', 'split', 'type'\]"):
    build({'retrieval': {'k': 3}})
  with error(r"config.evaluators.retrieval.split='val': valid choices"):
    build({'retrieval': {'split': 'val'}})
  with error(r"config.evaluators.retrieval.every=-1: must be an int >= 0"):
    build({'retrieval': {'every': -1}})
  with error(r"config.evaluators.retrieval.block='8': must be of type int"):
    build({'retrieval': {'block': '8'}})
  bad = {'robustness': evaluators.evaluator_config('robustness')}
  bad['robustness'].noises.audio = ('rotation',)
  with error(r"config.evaluators.robustness.noises.audio: 'rotation'; valid choices"):
    build(bad)
  with error('config.evaluators.retrieval.pair: .* two different modalities'):
    build({'retrieval': evaluators.evaluator_config('retrieval')}, text_model)
  with error('must be positive'):
    build({'retrieval': evaluators.evaluator_config('retrieval', block=0)})
  with error('from 0 \\(clean\\) to 1'):
    build({'robustness': evaluators.evaluator_config('robustness', levels=(0.0, 0.5))})
  with error('no decoder'):  # before training, not after it
    build({'reconstruction': evaluators.evaluator_config('reconstruction')})
  with error('no attention maps'):
    build({'attention': evaluators.evaluator_config('attention')})
  with error('needs image and text'):
    build({'zero_shot': evaluators.evaluator_config('zero_shot')})
  zero_shot_config = {'zero_shot': evaluators.evaluator_config('zero_shot')}
  with error('only a contrastive objective'):
    build(zero_shot_config, text_model)  # classification alone: unaligned spaces
  aligned = objectives.objectives_config(contrastive=1.0)
  aligned.contrastive.pair = ('image', 'text')
  build(zero_shot_config, text_model, aligned)
  with error("exactly one '{}'"):
    build({'zero_shot': evaluators.evaluator_config('zero_shot', template='a photo')},
          text_model, aligned)
  # Synthetic data has captions but no class names: refused before training, not after it.
  text_config = tiny_config('size=tiny,modalities=image+text')
  text_config.objectives = aligned
  text_config.evaluators.zero_shot = zero_shot_config['zero_shot']
  with pytest.raises(config_utils.ConfigError, match='zero_shot: .*only emoji has'):
    train.check_config(text_config)
  with error('pictures need pair=\\(text, image\\)'):
    build({'retrieval': evaluators.evaluator_config('retrieval', picture_queries=4)})


def test_best_metric_must_be_declared_by_an_in_loop_evaluator_off_the_test_split():
  config = _tiny_config(evals=('retrieval',))
  train.check_config(config)  # validation/accuracy, declared by the classification evaluator
  for name, match in [
      ('validation/acuracy', r"no evaluator of config.evaluators declares it; the in-loop "
                             r"evaluators declare \[.*'validation/accuracy'"),
      ('retrieval/audio_to_image/instance/recall@1', r'runs only after training \(every=0\)'),
      ('test/accuracy', 'reads the test split')]:
    config.train.best_metric = name
    with pytest.raises(config_utils.ConfigError, match=match):
      train.check_config(config)
  config.evaluators.retrieval.update(every=6, split='validation')
  config.train.best_metric = 'retrieval/audio_to_image/class/median_rank'
  built = train.check_config(config)
  assert evaluators.best_metric(config.train.best_metric, built)[1] == 'min'
  # A contrastive-only run trains no classifier: accuracy is not declared, its loss is.
  config = _tiny_config(evals=(), classification=0.0, contrastive=1.0)
  with pytest.raises(config_utils.ConfigError, match='no evaluator of config.evaluators'):
    train.check_config(config)
  config.train.best_metric = 'validation/loss'
  train.check_config(config)


def test_classification_first_in_split_order_then_the_rest_by_name():
  config = _tiny_config(evals=('robustness', 'retrieval'))
  config.evaluators.train_accuracy = evaluators.evaluator_config('classification', split='train')
  model = train.build_model(config, 10, None)
  names = [n for n, _, _ in evaluators.build_all(config.evaluators, model)]
  assert names == ['validation', 'test', 'train_accuracy', 'retrieval', 'robustness']


class _MeanLogit(common.Evaluator):
  """A toy evaluator, registered from this file: the mean of the top logit over a split."""

  def __init__(self, model, objectives=None, data=None, *, split='validation', scale=1.0):
    super().__init__(model, objectives, data, split=split)
    self.scale = scale

  def metrics(self):
    return {'mean_top_logit': common.MAX}

  def run(self, predict, batches, workdir):
    got = predict.over(_top_logit, batches())
    return {'mean_top_logit': self.scale * float(got['top'].mean()),
            'num_examples': len(got['label'])}


def _top_logit(out):
  return {'top': out['logits'].max(-1)}


@pytest.mark.slow
def test_a_new_evaluator_is_one_class_and_one_registry_line(tmp_path, monkeypatch):
  monkeypatch.setitem(evaluators.REGISTRY, 'mean_logit', _MeanLogit)
  config = tiny_config('size=tiny')
  config.evaluators.mean_logit = evaluators.evaluator_config('mean_logit', every=4, scale=2.0)
  config.train.best_metric = 'mean_logit/mean_top_logit'
  workdir = str(tmp_path / 'w')
  result = train.train_and_evaluate(config, workdir)
  records = files.read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
  in_loop = [r for r in records if r['split'] == 'mean_logit']
  assert [r['step'] for r in in_loop] == [4, 8, 12]  # every 4 steps; 12 is also the last
  assert all(r['num_examples'] == 40 for r in in_loop)
  # The best checkpoint is the step with the highest declared metric, and the final record
  # is the evaluator run again on that checkpoint.
  best = max(in_loop, key=lambda r: r['mean_top_logit'])
  final = [r for r in records if r['split'] == 'eval_mean_logit']
  assert len(final) == 1 and final[0]['step'] == best['step']
  assert final[0]['mean_top_logit'] == best['mean_top_logit']
  assert result.final['mean_logit'] == {k: v for k, v in final[0].items()
                                        if k not in ('step', 'split')}
  with pytest.raises(config_utils.ConfigError, match=r"mean_logit: unknown option\(s\) \['scal'\]"):
    config.evaluators.mean_logit.scal = 1.0
    train.check_config(config)


def test_zero_shot_summary_hand_made():
  classes = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])  # C = 3 class vectors
  images = np.array([[2.0, 0.1], [0.1, 3.0], [-1.0, -0.2], [0.0, -1.0]])
  labels = np.array([0, 1, 1, 2])
  # Predictions 0, 1, 2 and (tie of 0 and 2 at cosine 0) 0: the lower index wins.
  s = zero_shot.summarize(images, classes, labels)
  assert s['accuracy'] == 0.5 and s['top5_accuracy'] == 1.0 and s['num_classes'] == 3
  assert s['majority_class/accuracy'] == 0.5


@pytest.mark.slow
def test_text_vectors_match_the_model_on_the_text_alone(tmp_path):
  """Zero-shot's class-name vectors (one padded global batch with zero images) equal the text
  encoder's pooled vectors computed directly, on 4 names (padding rows dropped)."""
  config = tiny_config('size=tiny,modalities=image+text')
  config.objectives = objectives.objectives_config(contrastive=1.0)
  config.objectives.contrastive.pair = ('text', 'image')
  config.train.num_steps = 3
  workdir = str(tmp_path / 'w')
  train.train_and_evaluate(config, workdir)
  run, state, _ = train.restore_state(config, workdir, 'latest')
  ids = text_lib.encode(['red', 'green blue', 'a much longer class name', 'x'],
                        config.data.synthetic.text_length)
  predict = run.engine.bind(run.strategy.put_state(state))
  example = next(run.batches('test'))
  got = zero_shot._text_vectors(predict, ids, example, run.model.modalities)
  example = run.source('test')[0]
  batch = {'image': np.zeros((4,) + example['image'].shape, np.uint8), 'text': ids}
  variables = {'params': jax.device_get(state.params)}
  if state.batch_stats:
    variables['batch_stats'] = jax.device_get(state.batch_stats)
  direct = jax.jit(run.model.apply)(variables, batch)['embeddings']['text']
  np.testing.assert_allclose(got, np.asarray(direct), rtol=1e-5, atol=1e-5)
  assert got.shape == (4, config.model.dim)


class _MapsOnly:
  """A stand-in for common.Predict whose `over` returns hand-made attention maps."""

  def __init__(self, maps, labels, image_shape):
    self.got = {**{f'attn/{k}': v for k, v in maps.items()}, 'label': labels,
                'image': np.zeros((len(labels), *image_shape), np.uint8)}

  def over(self, select, batches, **kwargs):
    del select, batches, kwargs
    return self.got


def _grid_model(fusion, pooling, modalities=('image', 'audio'), trunk='auto', **fusion_options):
  config = config_utils.load_config_file(
      os.path.join(REPO, 'experiments', 'avmnist_grid.py')
      + f':fusion={fusion},trunk={trunk},modalities={"+".join(modalities)}')
  config.model.fusion.update(pooling=pooling, **fusion_options)
  return train.build_model(config, 4, None)


@pytest.mark.parametrize('fusion,pooling,modalities,trunk', [
    ('crossattn', 'cls', ('image', 'audio'), 'auto'),
    ('crossattn', 'mean', ('audio', 'image'), 'full'),  # a summary token after the image map
    ('joint', 'cls', ('image', 'audio'), 'auto'),
    ('joint', 'mean', ('audio', 'image'), 'full')])
def test_cell_mass_reads_audio_queries_over_the_labelled_cells_image_tokens(
    fusion, pooling, modalities, trunk):
  """On a 56x56 grid2 image the LeNet's token stage is 7x7: cell 0 (top left) holds tokens
  (r, c) r, c < 3 whole, and halves or a quarter of row and column 3. Maps put every audio
  query's image mass on cell 0's whole tokens: the score is 1 for label 0 and 0 for label 3,
  whatever the class token's row, the audio-to-audio weights or the summary token hold."""
  model = _grid_model(fusion, pooling, modalities, trunk)
  evaluator = attention.Evaluator(model, grid=2)
  keys, side = evaluator._image_tokens((56, 56, 1))  # pylint: disable=protected-access
  assert side == 7 and keys == 49 + (trunk == 'full')
  audio = 24  # the audio LeNet's 6x4 token stage
  cls = int(pooling == 'cls')
  whole_cell0 = [r * 7 + c for r in range(3) for c in range(3)]
  n = 4
  if fusion == 'crossattn':
    w = np.zeros((n, cls + audio, keys))
    w[:, :, whole_cell0] = 1 / 9
    if cls:
      w[:, 0] = 0.0
      w[:, 0, 6] = 1.0  # the class token's row (on cell 1): not an audio token
    if trunk == 'full':  # some mass on the summary token: in no cell
      w[:, cls:, :] *= 0.5
      w[:, cls:, 49] = 0.5
    maps = {'cross_0/image->audio': w, 'cross_0/audio->image': np.ones((n, cls + keys, audio))}
  else:
    width = cls + keys + audio
    img = (slice(cls, cls + keys) if modalities[0] == 'image' else slice(width - keys, width))
    aud = (slice(cls + keys, width) if modalities[0] == 'image' else slice(cls, width - keys))
    w = np.zeros((n, width, width))
    rows = np.arange(width)[aud]
    cols = np.arange(width)[img]
    w[:, rows[:, None], cols[whole_cell0][None, :]] = 0.5 / 9
    w[:, rows, rows] = 0.5  # audio tokens attend to themselves too: left out of the share
    w[:, np.arange(width)[img], cols[30]] = 1.0  # image queries: not audio
    maps = {'layer_0': w}
  labels = np.array([0, 0, 3, 3])
  result = evaluator._cell_mass(_MapsOnly(maps, labels, (56, 56, 1)), lambda: iter(()))  # pylint: disable=protected-access
  share = 0.5 if (fusion == 'crossattn' and trunk == 'full') else 1.0
  name = 'cross_0/image->audio' if fusion == 'crossattn' else 'layer_0'
  np.testing.assert_allclose(result[f'cell_mass/{name}'], (2 * share + 0) / 4)
  assert list(result) == [f'cell_mass/{name}', 'cell_mass', 'cell_mass_chance']
  np.testing.assert_allclose(result['cell_mass_chance'], 12.25 / keys)


def test_cell_mass_hand_made_and_refused_where_undefined():
  labelled = np.array([[1.0, 0.5, 0.0], [0.0, 0.5, 1.0]])  # 3 image keys, 2 examples
  w = np.array([[[0.2, 0.2, 0.1], [0.0, 0.0, 1.0]], [[0.0, 0.0, 0.5], [1.0, 0.0, 0.0]]])
  np.testing.assert_allclose(attention.cell_mass(w, labelled), [[0.6, 0.0], [1.0, 0.0]])
  error = lambda match: pytest.raises(config_utils.ConfigError, match=match)
  build = lambda model, **options: evaluators.build_all(
      ml_collections.ConfigDict({'attention': evaluators.evaluator_config('attention', **options)}),
      model)
  with error(r'attention.grid: 4: no AV-MNIST task grid4; valid: 0 \(no score\) or one of \[2, 3\]'):
    build(_grid_model('crossattn', 'cls'), grid=4)
  with error("attention.grid: fusion 'bottleneck' has no attention from audio to image"):
    build(_grid_model('bottleneck', 'cls'), grid=2)
  for data, task in (('pca5_snr-11', 'digit'), ('grid3_clean', 'grid3')):
    with error(f"attention.grid: 2: the data is AV-MNIST task '{task}', not grid2"):
      evaluators.build_all(ml_collections.ConfigDict({'attention': evaluators.evaluator_config(
          'attention', grid=2)}), _grid_model('crossattn', 'cls'), None,
                           ml_collections.ConfigDict({'name': 'avmnist', 'builder_config': data}))
  one_way = _grid_model('crossattn', 'cls', direction='b->a')
  with error("attention.grid: crossattn with direction='b->a' has no audio queries"):
    build(one_way, grid=2)
