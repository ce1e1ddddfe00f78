"""The linear_probe evaluator: the ridge fit against NumPy's closed form, the logistic fit
against scikit-learn, its config errors, and a tiny synthetic run in which the probe reports in
the loop and at the end, and cannot beat the information its modality carries."""
import os

import jax
import numpy as np
import pytest
from sklearn.linear_model import LogisticRegression
from sklearn.preprocessing import StandardScaler

from crossmodal import config_utils
from crossmodal import evaluators
from crossmodal import files
from crossmodal import objectives
from crossmodal import train
from crossmodal.data import datasets
from crossmodal.evaluators import linear_probe
from conftest import tiny_config


def _standardised(x, reference):
  return (x - reference.mean(0)) / reference.std(0)


def _gaussian_classes(rng, n, centres, spread=1.0):
  labels = rng.integers(0, len(centres), n)
  return centres[labels] + spread * rng.normal(size=(n, centres.shape[1])), labels


# ----------------------------------------------------------------------------- the fits


def test_ridge_equals_numpy_closed_form():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(80, 6)) * rng.uniform(0.1, 20.0, 6) + rng.normal(size=6) * 5
  labels = rng.integers(0, 4, 80)
  l2 = 3.0
  probe = linear_probe.fit(x, labels, 4, 'ridge', l2)
  # (A^T A + diag(l2, ..., l2, 0)) [W; b] = A^T Y on the standardised features with a ones
  # column A, in float64.
  a = np.c_[_standardised(x, x), np.ones(80)]
  want = np.linalg.solve(a.T @ a + np.diag([l2] * 6 + [0.0]), a.T @ np.eye(4)[labels])
  np.testing.assert_allclose(probe.weights, want[:6], rtol=1e-4, atol=1e-6)
  np.testing.assert_allclose(probe.bias, want[6], rtol=1e-4, atol=1e-6)
  # The same as least squares on the system stacked with sqrt(l2) I rows for the weights only.
  stacked = np.r_[a, np.c_[np.sqrt(l2) * np.eye(6), np.zeros((6, 1))]]
  targets = np.r_[np.eye(4)[labels], np.zeros((6, 4))]
  np.testing.assert_allclose(want, np.linalg.lstsq(stacked, targets, rcond=None)[0], atol=1e-10)
  # Test-time scores use the train statistics.
  x_new = rng.normal(size=(10, 6)) * 4
  np.testing.assert_allclose(linear_probe.logits(probe, x_new.astype(np.float32)),
                             np.c_[_standardised(x_new, x), np.ones(10)] @ want,
                             rtol=1e-4, atol=1e-5)


def test_ridge_leaves_the_bias_unregularised_and_drops_constant_features():
  rng = np.random.default_rng(1)
  x = rng.normal(size=(50, 3))
  labels = np.r_[np.zeros(30, int), np.ones(15, int), np.full(5, 2)]
  # Under a huge penalty the weights vanish and the bias is the class frequencies.
  probe = linear_probe.fit(x, labels, 3, 'ridge', 1e9)
  np.testing.assert_allclose(probe.weights, 0, atol=1e-6)
  np.testing.assert_allclose(probe.bias, [0.6, 0.3, 0.1], atol=1e-6)
  # A constant feature (a dead unit) gets weight 0 and no NaN, train and test.
  with_constant = np.c_[x, np.full(50, 7.0)]
  probe = linear_probe.fit(with_constant, labels, 3, 'ridge', 1.0)
  reference = linear_probe.fit(x, labels, 3, 'ridge', 1.0)
  np.testing.assert_array_equal(probe.weights[3], 0)
  np.testing.assert_allclose(probe.weights[:3], reference.weights, rtol=1e-5, atol=1e-7)
  assert np.isfinite(linear_probe.logits(probe, np.full((2, 4), 1e3, np.float32))).all()


def test_logistic_separates_linearly_separable_data():
  rng = np.random.default_rng(2)
  x = rng.normal(size=(120, 5))
  labels = np.argmax(x @ rng.normal(size=(5, 4)), 1)  # linear regions: separable
  for l2 in (1e-3, 0.0):
    probe = linear_probe.fit(x, labels, 4, 'logistic', l2, steps=100)
    assert linear_probe.accuracy(probe, x, labels) == 1.0
    assert np.isfinite(probe.weights).all()


def test_logistic_agrees_with_scikit_learn():
  rng = np.random.default_rng(3)
  centres = rng.normal(size=(3, 5)) * 1.5  # overlapping classes: a well-conditioned optimum
  x, labels = _gaussian_classes(rng, 400, centres)
  x = x * rng.uniform(0.5, 4.0, 5) + 3.0  # standardisation matters
  l2 = 1.0
  probe = linear_probe.fit(x, labels, 3, 'logistic', l2, steps=100)
  scaler = StandardScaler().fit(x)
  sk = LogisticRegression(C=1 / l2, tol=1e-10, max_iter=10_000).fit(scaler.transform(x), labels)
  np.testing.assert_allclose(probe.weights, sk.coef_.T, atol=2e-3)
  np.testing.assert_allclose(probe.bias, sk.intercept_, atol=2e-3)
  x_test, _ = _gaussian_classes(rng, 400, centres)
  x_test = x_test.astype(np.float32)
  ours = np.argmax(linear_probe.logits(probe, x_test), 1)
  np.testing.assert_array_equal(ours, sk.predict(scaler.transform(x_test)))
  # Deterministic: the same fit, bit for bit.
  again = linear_probe.fit(x, labels, 3, 'logistic', l2, steps=100)
  np.testing.assert_array_equal(again.weights, probe.weights)


# ----------------------------------------------------------------------------- config errors


def _build(options, fusion='concat', objective_weights=None):
  config = tiny_config(f'size=tiny,fusion={fusion}')
  if objective_weights:
    config.objectives = objectives.objectives_config(**objective_weights)
  model = train.build_model(config, 10, None)  # with the pooled vectors the objectives ask for
  return evaluators.build_all(
      {'linear_probe': evaluators.evaluator_config('linear_probe', **options)}, model,
      config.get('objectives'))


def test_config_errors():
  error = lambda match: pytest.raises(config_utils.ConfigError, match=match)
  with error(r"config.evaluators.linear_probe.source: 'depth': valid choices are a modality "
             r"of the model \['image', 'audio'\] or 'fused'"):
    _build({'source': 'depth'})
  with error(r"linear_probe.source: fusion='late' .* has no fused vector"):
    _build({'source': 'fused'}, fusion='late')
  _build({'source': 'image'}, fusion='late')  # late fusion's towers do have pooled vectors
  _build({'source': 'fused'})
  with error(r"config.evaluators.linear_probe: under fusion='crossattn' the encoders compute "
             r"no pooled vector for \['audio'\] unless an embedding objective"):
    _build({'source': 'audio'}, fusion='crossattn')
  _build({'source': 'audio'}, fusion='crossattn', objective_weights={'contrastive': 1.0})
  _build({'source': 'fused'}, fusion='crossattn')  # the attention fusion's own output
  with error(r"linear_probe.method: 'svm'; valid choices: \['ridge', 'logistic'\]"):
    _build({'method': 'svm'})
  with error(r'linear_probe.l2: 0.0 must be > 0 for ridge'):
    _build({'l2': 0.0})
  _build({'l2': 0.0, 'method': 'logistic'})
  with error(r"linear_probe.train_split: 'test' is also the split the probe is tested on"):
    _build({'train_split': 'test'})
  with error(r"linear_probe.train_split: 'val'; valid choices"):
    _build({'train_split': 'val'})
  with error(r"linear_probe.split='val': valid choices"):
    _build({'split': 'val'})
  with error(r'linear_probe.steps: 0 must be >= 1'):
    _build({'steps': 0})
  with error(r'linear_probe.max_train_examples: -1 must be >= 0'):
    _build({'max_train_examples': -1})
  model = train.build_model(tiny_config('size=tiny'), 10, None)
  with error(r"config.evaluators.linear_probe: unknown option\(s\) \['lambda'\]"):
    evaluators.build_all({'linear_probe': {'lambda': 1.0}}, model)


def _outputs_shapes(config):
  """Shapes of the model's outputs on a validation batch (traced, nothing compiled)."""
  model = train.build_model(config, config.data.synthetic.num_classes, None)
  source = datasets.get_source(config.data, 'validation')
  batch = {k: np.stack([source[i][k] for i in range(2)]) for k in source[0]}
  out, _ = jax.eval_shape(lambda: model.init_with_output(jax.random.PRNGKey(0), batch))
  return out


def test_the_fused_source_reads_the_fusions_fused_vector():
  out = _outputs_shapes(tiny_config('size=tiny'))
  select = linear_probe._select('fused')  # pylint: disable=protected-access
  if 'fused' not in out:
    with pytest.raises(ValueError, match=r"returns no fused vector .*models/model.py"):
      select(out)
    pytest.skip("crossmodal/models/model.py does not return the fusion's 'fused' vector yet")
  # concat of the two 8-wide pooled vectors
  assert select(out)['features'].shape == (2, 16)
  assert linear_probe._select('image')(out)['features'].shape == (2, 8)  # pylint: disable=protected-access


# ----------------------------------------------------------------------------- a tiny run

NUM_EVAL = 500  # validation and test examples: the information bound below to +-0.07


@pytest.fixture(scope='module')
def probed(tmp_path_factory):
  """A tiny image+audio run on 4 classes with two probes, its records and workdir.

  4 classes: the image tells {0, 1} from {2, 3}, the audio {1, 2} from {3, 0}, so either
  alone can be right at most half the time (chance 1/4) and the two together identify the
  class. Width 32 and 512 train examples, so that 12 steps give each tower's pooled vector
  most of its pair information; no classification evaluators (time).
  """
  config = tiny_config('size=tiny')
  config.data.synthetic.update(num_classes=4, num_train=512, num_validation=NUM_EVAL,
                               num_test=NUM_EVAL)
  config.data.eval_batch_size = 250  # the 512 train examples: two full batches, one padded
  config.model.dim = 32
  for m in ('image', 'audio'):
    config.model.encoders[m].base_channels = 4
  del config.evaluators['validation'], config.evaluators['test']
  config.evaluators.linear_probe = evaluators.evaluator_config(
      'linear_probe', source='audio', every=6)
  # On validation, so that it may choose the checkpoint; logistic; 400 of the train examples.
  config.evaluators.image_probe = evaluators.evaluator_config(
      'linear_probe', source='image', split='validation', method='logistic',
      max_train_examples=400, every=6)
  config.train.best_metric = 'image_probe/accuracy'
  if 'fused' in _outputs_shapes(config):  # both modalities: no pair ceiling
    config.evaluators.fused_probe = evaluators.evaluator_config(
        'linear_probe', source='fused', every=6)
  workdir = str(tmp_path_factory.mktemp('probe') / 'w')
  result = train.train_and_evaluate(config, workdir)
  return result, files.read_jsonl(os.path.join(workdir, 'metrics.jsonl'))


def _records(records, split):
  return [r for r in records if r['split'] == split]


def test_probes_report_in_the_loop_and_at_the_end(probed):
  result, records = probed
  for name, num_train in (('linear_probe', 512), ('image_probe', 400)):
    in_loop = _records(records, name)
    assert [r['step'] for r in in_loop] == [6, 12]
    final = _records(records, f'eval_{name}')
    assert len(final) == 1
    for r in in_loop + final:
      assert 0 <= r['accuracy'] <= 1 and 0 <= r['train_accuracy'] <= 1
      assert r['num_train'] == num_train and r['num_examples'] == NUM_EVAL
    assert result.final[name]['accuracy'] == final[0]['accuracy']
  # The final records are of the checkpoint with the best validation probe accuracy.
  best = max(_records(records, 'image_probe'), key=lambda r: r['accuracy'])
  assert _records(records, 'eval_image_probe')[0]['step'] == best['step']
  assert _records(records, 'eval_image_probe')[0]['accuracy'] == best['accuracy']


def test_a_probe_cannot_beat_the_information_its_modality_carries(probed):
  """Within a pair, image (or audio) features are identically distributed, so the probe's
  choice is independent of which of the two classes is true: test accuracy is at most a
  Binomial(n, 1/2) / n draw, <= 1/2 + 3 / (2 sqrt(n)) but for a 0.1% chance. And trained
  towers carry the pair: the probes get well above chance (1/4), most of the way to 1/2."""
  _, records = probed
  ceiling = 0.5 + 3 / (2 * np.sqrt(NUM_EVAL))
  for name in ('linear_probe', 'image_probe'):
    final = _records(records, f'eval_{name}')[0]
    assert 0.375 < final['accuracy'] <= ceiling, (name, final)


def test_a_probe_of_the_fused_vector_beats_either_modality(probed):
  _, records = probed
  final = _records(records, 'eval_fused_probe')
  if not final:
    pytest.skip("crossmodal/models/model.py does not return the fusion's 'fused' vector yet")
  assert final[0]['accuracy'] > 0.5 + 3 / (2 * np.sqrt(NUM_EVAL)), final
