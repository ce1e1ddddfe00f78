"""Evaluators: retrieval ranks on hand-made cases, the robustness summaries against MultiBench's
definitions, the noise corruptions, that a missing modality removes its information, and every
evaluator end to end on a tiny synthetic run (records in metrics.jsonl, pictures on disk)."""
import os

import jax
import ml_collections
import numpy as np
import pytest

from crossmodal import config_utils
from crossmodal import evaluators
from crossmodal import files
from crossmodal import train
from crossmodal.data import noise
from crossmodal.models import text as text_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SYNTHETIC = os.path.join(REPO, 'experiments', 'synthetic.py')


def test_retrieval_ranks_hand_made():
  # Keys k0..k3 on the unit circle at 0, 90, 180, 270 degrees, classes [0, 1, 0, 1].
  keys = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0], [0.0, -1.0]])  # exact ties
  queries = np.stack([keys[0], keys[2], keys[1] * 2.0 + keys[0] * 0.1, keys[3]])
  labels = np.array([0, 1, 0, 1])
  instance, by_class = evaluators.retrieval_ranks(queries, keys, labels, labels, block=3)
  # q1 = k2: similarities [-1, 0, 1, 0]; its own key k1 (0) comes after k2 and after k3, which
  # ties with it (ties count against the query): rank 3. q2 ~ k1: [.05, 1, -.05, -1]; own k2
  # after k1 and k0: rank 3.
  np.testing.assert_array_equal(instance, [1, 3, 3, 1])
  # By class: q1 (class 1): best class-1 key scores 0 (k1, k3), behind k2: rank 2. q2 (class 0):
  # best class-0 key k0 (.05), behind k1: rank 2.
  np.testing.assert_array_equal(by_class, [1, 2, 2, 1])
  summary = evaluators.retrieval_summary(instance, by_class, ks=(1, 2))
  assert summary['instance/recall@1'] == 0.5 and summary['instance/recall@2'] == 0.5
  assert summary['instance/median_rank'] == 2.0
  assert summary['class/recall@1'] == 0.5 and summary['class/recall@2'] == 1.0


def test_retrieval_ranks_blocks_do_not_change_the_result():
  rng = np.random.default_rng(0)
  q, k = rng.normal(size=(50, 4)), rng.normal(size=(50, 4))
  labels = rng.integers(0, 5, size=50)
  whole = evaluators.retrieval_ranks(q, k, labels, labels, block=1000)
  blocked = evaluators.retrieval_ranks(q, k, labels, labels, block=7)
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
  assert evaluators.chance_class_recall(np.arange(10)) == pytest.approx(0.1)
  assert evaluators.chance_class_recall(np.array([0, 0, 0, 1])) == pytest.approx(0.625)


def test_robustness_summaries():
  levels = [0.0, 0.5, 1.0]
  assert evaluators.relative_robustness(levels, [1.0, 1.0, 1.0]) == 1.0
  assert evaluators.relative_robustness(levels, [0.8, 0.6, 0.2]) == pytest.approx(
      0.5 * (0.7 + 0.4))
  # MultiBench: sum of f - (LF + f0 - LF0).
  assert evaluators.effective_robustness([0.9, 0.7, 0.5], [0.8, 0.5, 0.2]) == pytest.approx(
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
  config = config_utils.load_config_file(f'{SYNTHETIC}:size=tiny,fusion={fusion}')
  config.objectives = config_utils.objectives_config(**weights)
  config.evaluators = ml_collections.ConfigDict(
      {n: evaluators.evaluator_config(n) for n in evals})
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
  select = lambda out: {'logits': out['logits']}
  hide = lambda size: np.stack([np.zeros(size, bool), np.ones(size, bool)], 1)  # (image, audio)
  scramble = lambda batch, i: {**batch, 'image': np.random.default_rng(i).integers(
      0, 256, batch['image'].shape).astype(np.uint8)}
  hidden = evaluators.outputs_over_split(run, state, 'test', select, present_fn=hide)
  hidden_scrambled = evaluators.outputs_over_split(run, state, 'test', select, scramble, hide)
  np.testing.assert_allclose(hidden['logits'], hidden_scrambled['logits'], atol=1e-6)
  shown_scrambled = evaluators.outputs_over_split(run, state, 'test', select, scramble)
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
  the attention evaluator draws the maps); without one, retrieval is refused before training."""
  config = _tiny_config(fusion='crossattn', evals=('attention', 'retrieval'), contrastive=1.0)
  workdir = str(tmp_path / 'w')
  train.train_and_evaluate(config, workdir)
  results = train.evaluate(config, workdir, 'latest')
  assert results['attention']['maps'] > 0 and os.path.exists(results['attention']['picture'])
  assert results['retrieval']['num_examples'] == 40
  config.objectives = config_utils.objectives_config()
  with pytest.raises(ValueError, match='no pooled vector'):
    train.check_buildable(config)


def test_attention_axes_follow_the_fusion_names():
  # crossattn: 'source->target', the target's tokens are the queries (models/fusion.py).
  assert evaluators._token_axes('cross_1/audio->image') == ('image', 'audio')
  assert evaluators._token_axes('self_0/audio') == ('audio', 'audio')
  assert evaluators._token_axes('layer_0/image') == ('image (+ bottleneck)',) * 2
  assert evaluators._token_axes('layer_0') == ('all modalities',) * 2


def test_evaluator_config_errors():
  config = _tiny_config()
  model = train.build_model(config, 10, None)
  text_model = train.build_model(
      config_utils.load_config_file(f'{SYNTHETIC}:size=tiny,modalities=image+text'), 10, None)
  with pytest.raises(ValueError, match='unknown evaluator'):
    evaluators.check_config({'fid': {}}, model)
  bad = ml_collections.ConfigDict({'robustness': evaluators.evaluator_config('robustness')})
  bad.robustness.noises.audio = ('rotation',)
  with pytest.raises(ValueError, match='valid choices'):
    evaluators.check_config(bad, model)
  bad = ml_collections.ConfigDict({'retrieval': evaluators.evaluator_config('retrieval')})
  with pytest.raises(ValueError, match='two different modalities'):
    evaluators.check_config(bad, text_model)
  with pytest.raises(ValueError, match='must be positive'):
    evaluators.check_config({'retrieval': evaluators.evaluator_config('retrieval', block=0)},
                            model)
  with pytest.raises(ValueError, match='from 0 \\(clean\\) to 1'):
    evaluators.check_config({'robustness': evaluators.evaluator_config(
        'robustness', levels=(0.0, 0.5))}, model)
  with pytest.raises(ValueError, match='no decoder'):  # before training, not after it
    evaluators.check_config({'reconstruction': evaluators.evaluator_config('reconstruction')},
                            model)
  with pytest.raises(ValueError, match='no attention maps'):
    evaluators.check_config({'attention': evaluators.evaluator_config('attention')}, model)
  with pytest.raises(ValueError, match='needs image and text'):
    evaluators.check_config({'zero_shot': evaluators.evaluator_config('zero_shot')}, model)
  zero_shot = {'zero_shot': evaluators.evaluator_config('zero_shot')}
  with pytest.raises(ValueError, match='only a contrastive objective'):
    evaluators.check_config(zero_shot, text_model)  # classification alone: unaligned spaces
  aligned = config_utils.objectives_config(contrastive=1.0)
  aligned.contrastive.pair = ('image', 'text')
  evaluators.check_config(zero_shot, text_model, aligned)
  with pytest.raises(ValueError, match="exactly one '{}'"):
    evaluators.check_config({'zero_shot': evaluators.evaluator_config(
        'zero_shot', template='a photo')}, text_model, aligned)
  # Synthetic data has captions but no class names: refused before training, not after it.
  text_config = config_utils.load_config_file(f'{SYNTHETIC}:size=tiny,modalities=image+text')
  text_config.objectives = aligned
  text_config.evaluators = ml_collections.ConfigDict(zero_shot)
  with pytest.raises(ValueError, match='only emoji has'):
    train.check_buildable(text_config)
  with pytest.raises(ValueError, match='pictures need pair=\\(text, image\\)'):
    evaluators.check_config({'retrieval': evaluators.evaluator_config(
        'retrieval', picture_queries=4)}, model)


def test_zero_shot_summary_hand_made():
  classes = np.array([[1.0, 0.0], [0.0, 1.0], [-1.0, 0.0]])  # C = 3 class vectors
  images = np.array([[2.0, 0.1], [0.1, 3.0], [-1.0, -0.2], [0.0, -1.0]])
  labels = np.array([0, 1, 1, 2])
  # Predictions 0, 1, 2 and (tie of 0 and 2 at cosine 0) 0: the lower index wins.
  s = evaluators.zero_shot_summary(images, classes, labels)
  assert s['accuracy'] == 0.5 and s['top5_accuracy'] == 1.0 and s['num_classes'] == 3
  assert s['majority_class/accuracy'] == 0.5


@pytest.mark.slow
def test_text_vectors_match_the_model_on_the_text_alone(tmp_path):
  """Zero-shot's class-name vectors (one padded global batch with zero images) equal the text
  encoder's pooled vectors computed directly, on 4 names (padding rows dropped)."""
  config = config_utils.load_config_file(f'{SYNTHETIC}:size=tiny,modalities=image+text')
  config.objectives = config_utils.objectives_config(contrastive=1.0)
  config.objectives.contrastive.pair = ('text', 'image')
  config.train.num_steps = 3
  workdir = str(tmp_path / 'w')
  train.train_and_evaluate(config, workdir)
  run, state, _ = train.restore_state(config, workdir, 'latest')
  ids = text_lib.encode(['red', 'green blue', 'a much longer class name', 'x'],
                        config.data.synthetic.text_length)
  got = evaluators._text_vectors(run, state, ids, 'test')
  example = run.source('test')[0]
  batch = {'image': np.zeros((4,) + example['image'].shape, np.uint8), 'text': ids}
  variables = {'params': jax.device_get(state.params)}
  if state.batch_stats:
    variables['batch_stats'] = jax.device_get(state.batch_stats)
  direct = jax.jit(run.model.apply)(variables, batch)['embeddings']['text']
  np.testing.assert_allclose(got, np.asarray(direct), rtol=1e-5, atol=1e-5)
  assert got.shape == (4, config.model.dim)
