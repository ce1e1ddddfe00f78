"""The benchmark script's quick path on tiny sizes: it runs and reports numbers (no timing
assertions: speed is measured by the script itself, never asserted in tests)."""
import os
import re

import numpy as np
import pytest

from crossmodal import config_utils
from conftest import REPO

pytestmark = pytest.mark.usefixtures('fast_prng')  # tests/conftest.py


@pytest.fixture(scope='module')
def benchmark():
  # registered: its dataclasses look their module up in sys.modules
  return config_utils.load_module(os.path.join(REPO, 'scripts', 'benchmark.py'), 'benchmark',
                                  register=True)


def _rows(text, title):
  section = text.split(f'## {title}')[1].split('\n## ')[0]
  return [l for l in section.splitlines() if l.startswith('|') and not l.startswith('|---')][1:]


@pytest.mark.slow
def test_tiny_benchmark_reports_featurization_and_utilisation(benchmark, tmp_path):
  """The two in-process sections with logic of their own, at tiny size. Not here: 'scaling'
  and 'layers' (timing loops over the fusion block, tested in tests/test_fusion.py, and over
  conv.conv2d_same and max_pool_2x2, whose values, gradients and path choice tests/test_conv.py
  checks; 25 s of compilation on a busy 2-core machine), 'torch' (below), 'pipeline' and
  'startup' (they need AV-MNIST prepared)."""
  out = tmp_path / 'perf.md'
  assert benchmark.main(['--tiny', '--sections=features,utilisation', f'--out={out}']) == 0
  text = out.read_text()
  features = _rows(text, 'Featurization')
  if features:  # FSDD sources present: timing rows, then the deviations from librosa
    timing = [r for r in features if r.count('|') == 6]
    assert [r.split('|')[1].strip() for r in timing] == ['log-mel (dB)'] * 2 + ['MFCC'] * 2
    for row in timing:  # clips/s of both and the median ratio with its range
      cells = [c.strip() for c in row.split('|')[3:-1]]
      assert float(cells[0]) > 0 and float(cells[1]) > 0
      assert re.fullmatch(r'\d+\.\d\dx \(\d+\.\d\d-\d+\.\d\d\)', cells[2])
    deviations = [r for r in features if r.count('|') == 4]
    assert [float(r.split('|')[2]) < 1e-3 and float(r.split('|')[3]) < 5e-3
            for r in deviations[1:]] == [True, True]
  utilisation = [r for r in _rows(text, 'Hardware utilisation')  # TINY: concat only
                 if not r.startswith('| model |')]  # the second table's header
  assert [r.split('|')[1].strip() for r in utilisation] == ['concat', 'concat']
  cells = [c.strip() for c in utilisation[0].split('|')[3:-1]]
  assert float(cells[0]) > 0 and float(cells[1]) > 0  # model and featurizer FLOPs
  assert float(cells[2]) == 0  # concat has no dropout
  assert re.fullmatch(r'\d+\.\d%', cells[-1])
  encoders, rest = (float(c.split('(')[0]) for c in utilisation[1].split('|')[2:4])
  assert encoders > 0 and rest >= 0  # encoders vs the rest (0.00 GFLOP at batch 8)
  assert abs(encoders + rest - float(cells[0])) <= 0.011  # each rounded to 0.01


def test_unknown_section_is_an_error(benchmark):
  with pytest.raises(SystemExit):
    benchmark.main(['--tiny', '--sections=gpu'])


def test_utilisation_counts_dropout_apart_and_reads_base_py(benchmark):
  """What the tiny run skips (crossattn's dropout, the transformer case), on the configs."""
  crossattn = benchmark.sgd_config('crossattn')
  deterministic = benchmark.without_dropout(crossattn)
  assert deterministic.model.fusion.dropout == 0 and crossattn.model.fusion.dropout > 0
  assert benchmark.without_dropout(benchmark.sgd_config('concat')) is None
  label, config, batch = benchmark.transformer_case('tiny')
  assert label == 'transformers (base.py size=tiny)'
  assert set(config.model.modalities) <= set(batch)
  assert len(batch['label']) == config.data.global_batch_size


# ----------------------------------------------------------------------------- PyTorch reference
# Correct code agrees to ~1e-6; 2e-5 still fails subtle slips (exact instead of tanh GELU in the
# crossattn MLPs gives ~1.5e-4 at init), where the looser 1e-4 would not reliably.
LOGITS_TOLERANCE = 2e-5


@pytest.fixture(scope='module')
def torch_reference(benchmark):
  """One intra-op thread: with two OpenMP threads on a busy 2-core machine (a test run beside
  other jobs) a step took 60x longer (1.8 s vs 0.03 s); these tests check values, not speed."""
  torch = pytest.importorskip('torch')
  threads = torch.get_num_threads()
  torch.set_num_threads(1)
  yield benchmark._torch_reference()  # pylint: disable=protected-access
  torch.set_num_threads(threads)


@pytest.mark.parametrize('fusion', ['concat', 'crossattn'])
def test_torch_reference_has_the_jax_parameter_count(torch_reference, fusion):
  assert torch_reference.count_params(fusion=fusion) == torch_reference.jax_count_params(fusion)


def test_torch_crossattn_logits_match_jax(torch_reference, benchmark):
  """Same weights and BatchNorm statistics -> same logits (eval mode)."""
  batch = benchmark.random_batches(2, 1, seed=1)[0]
  diff = torch_reference.logits_max_abs_diff(batch, fusion='crossattn')
  assert diff < LOGITS_TOLERANCE


@pytest.fixture(scope='module')
def jax_trajectory(benchmark):
  """fusion -> (batches, losses, variables): the JAX side of the loss-parity check exactly as
  the tiny benchmark computes it (benchmark.loss_parity), once per fusion for the module."""
  cache = {}

  def get(fusion):
    if fusion not in cache:
      batches = benchmark.random_batches(benchmark.TINY.parity_batch, 2, seed=1)
      cache[fusion] = (batches, *benchmark.jax_loss_trajectory(fusion, batches,
                                                               benchmark.TINY.parity_steps))
    return cache[fusion]
  return get


@pytest.fixture(scope='module')
def crossattn_trajectory(jax_trajectory):
  return jax_trajectory('crossattn')


@pytest.mark.parametrize('variant', ['eager', 'eager+channels_last'])
def test_torch_variant_follows_the_jax_loss_trajectory(torch_reference, benchmark,
                                                        crossattn_trajectory, variant):
  """Copied weights, dropout off, SGD on the same batches: the same losses step by step."""
  batches, losses, variables = crossattn_trajectory
  diff = benchmark.loss_difference(torch_reference, 'crossattn', variant, batches, losses,
                                   variables)
  assert diff <= benchmark.PARITY_TOLERANCE, diff


def test_loss_parity_catches_a_wrong_learning_rate(torch_reference, benchmark,
                                                   crossattn_trajectory):
  batches, losses, variables = crossattn_trajectory
  diff = benchmark.loss_difference(torch_reference, 'crossattn', 'eager', batches, losses,
                                   variables, lr=0.0101)
  assert diff > 10 * benchmark.PARITY_TOLERANCE, diff


def test_torch_concat_follows_the_jax_loss_trajectory(torch_reference, benchmark,
                                                      jax_trajectory):
  batches, losses, variables = jax_trajectory('concat')
  diff = benchmark.loss_difference(torch_reference, 'concat', 'eager', batches, losses,
                                   variables)
  assert diff <= benchmark.PARITY_TOLERANCE, diff


@pytest.mark.skipif(not os.environ.get('CROSSMODAL_TEST_TORCH_COMPILE'),
                    reason='torch.compile takes 1-3 min per model on a 2-core CPU; set '
                           'CROSSMODAL_TEST_TORCH_COMPILE=1 (the benchmark checks it every run)')
def test_compiled_torch_follows_the_jax_loss_trajectory(torch_reference, benchmark,
                                                        crossattn_trajectory):
  batches, losses, variables = crossattn_trajectory
  diff = benchmark.loss_difference(torch_reference, 'crossattn', 'compile', batches, losses,
                                   variables)
  assert diff <= benchmark.PARITY_TOLERANCE, diff


def test_torch_trainer_uses_fused_sgd_on_cpu(torch_reference):
  trainer = torch_reference.Trainer('crossattn', 'eager+channels_last', device='cpu')
  assert trainer.settings['optimizer'] == 'SGD(fused=True)'
  assert trainer.optimizer.param_groups[0]['fused']
  assert trainer.model.image.trunk[0].weight.is_contiguous(memory_format=torch_channels_last())


def torch_channels_last():
  import torch  # pylint: disable=import-outside-toplevel
  return torch.channels_last


def test_torch_reference_rejects_switches_it_does_not_implement(torch_reference):
  config = torch_reference.experiment_config('crossattn').model
  config.fusion.combine = 'residual'
  with pytest.raises(ValueError, match='combine'):
    torch_reference.torch_model('crossattn', config)


@pytest.mark.slow
def test_tiny_torch_comparison_runs_pinned_workers(benchmark, torch_reference, jax_trajectory,
                                                   tmp_path, monkeypatch):
  """The harness end to end at tiny size (crossattn): parity rows, then per-variant and summary
  rows from separate worker processes pinned to one core (no timing assertions)."""
  trajectory = jax_loss_trajectory_reusing(benchmark, jax_trajectory)
  monkeypatch.setattr(benchmark, 'jax_loss_trajectory', trajectory)
  monkeypatch.setenv('JAX_DEFAULT_PRNG_IMPL', 'rbg')  # the JAX worker's init (see fast_prng)
  core = sorted(os.sched_getaffinity(0))[0]
  out = tmp_path / 'perf.md'
  assert benchmark.main(['--tiny', '--sections=torch', f'--cores={core}', f'--out={out}']) == 0
  assert trajectory.reused == ['crossattn']
  text = out.read_text()
  rows = [r for r in _rows(text, 'Training throughput vs PyTorch')
          if not r.startswith('| model |')]  # the section's later tables' headers
  summary, parity, variants = rows[0], rows[1:3], rows[3:]
  assert summary.startswith('| crossattn | 8 |') and '(eager' in summary
  assert summary.endswith('| 2 |')  # rounds of the fastest variant
  assert [r.split('|')[4].strip() for r in parity] == ['ok', 'ok']
  assert [r.split('|')[3].strip() for r in variants] == ['eager', 'eager+channels_last']
  for row in variants:
    assert re.search(r'\d+\.\d\dx \(\d+\.\d\d-\d+\.\d\d\) \|$', row), row
  assert 'SGD(fused=True)' in text and f'pinned to cores [{core}]' in text
  assert "'OMP_NUM_THREADS': '1'" in text and '1 intra-op' in text


def jax_loss_trajectory_reusing(benchmark, jax_trajectory):
  """benchmark.jax_loss_trajectory that returns the module's trajectory when asked for the
  same one (same fusion, batches and steps) instead of compiling it again."""
  original = benchmark.jax_loss_trajectory

  def trajectory(fusion, batches, steps):
    known, losses, variables = jax_trajectory(fusion)
    if steps == len(losses) and len(batches) == len(known) and all(
        np.array_equal(a[k], b[k]) for a, b in zip(batches, known) for k in a):
      trajectory.reused.append(fusion)
      return losses, variables
    return original(fusion, batches, steps)
  trajectory.reused = []
  return trajectory


# ----------------------------------------------------------------------------- librosa, batched


def test_batched_librosa_equals_the_per_clip_reference(benchmark):
  """Float32, one call, the filterbank built once, top_db per clip: the per-clip float64
  reference within float32 rounding (observed 1.7e-5 dB and 1.2e-4 on 1000 FSDD clips)."""
  from crossmodal.data import features  # pylint: disable=import-outside-toplevel
  clips = benchmark.fsdd_clips(6)
  if clips is None:
    pytest.skip('FSDD sources not found')
  clips[1] *= 1e-3  # a quiet clip: its top_db floor is 60 dB below the others'
  clips[2, 3000:] = 0.0  # exact silence reaches the floor
  cfg = features.features_config()
  batched = features.librosa_log_mel_batched(clips, cfg)
  reference = features.librosa_log_mel(clips, cfg)
  assert batched.dtype == np.float32 and batched.shape == reference.shape
  assert np.abs(batched - reference).max() < 1e-4
  mfcc = features.librosa_mfcc_batched(clips, cfg)
  assert np.abs(mfcc - features.librosa_mfcc(clips, cfg)).max() < 5e-4
  # One floor for the whole batch (librosa's top_db on [N, ...]) would not pass:
  whole = np.maximum(batched, batched.max() - cfg.top_db)
  assert np.abs(whole - reference).max() > 1.0
