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
def test_tiny_benchmark_reports_every_measured_section(benchmark, tmp_path):
  out = tmp_path / 'perf.md'
  assert benchmark.main(['--tiny', '--sections=features,scaling,utilisation,layers',
                         f'--out={out}']) == 0
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
  scaling = _rows(text, 'Cross-attention block')
  assert len(scaling) == 1 and float(scaling[0].split('|')[3]) > 0
  utilisation = _rows(text, 'Hardware utilisation')
  assert [r.split('|')[1].strip() for r in utilisation[:3]] == [
      'concat', 'crossattn', 'transformers (base.py size=tiny)']
  for row in utilisation[:3]:
    cells = [c.strip() for c in row.split('|')[3:-1]]
    assert float(cells[0]) > 0 and float(cells[1]) > 0  # model and featurizer FLOPs
    assert re.fullmatch(r'\d+\.\d%', cells[-1])
  dropout = [float(r.split('|')[5]) for r in utilisation[:2]]
  assert dropout[0] == 0 and dropout[1] >= 0  # concat has no dropout
  split = utilisation[-2:]  # encoders vs the rest, per LeNet model
  assert [r.split('|')[1].strip() for r in split] == ['concat', 'crossattn']
  layers = _rows(text, 'LeNet stages')
  assert len(layers) == len(benchmark.LENET_LAYERS) + 1 and layers[-1].startswith('| all')
  assert '(shifted)' in layers[0] and '(lax)' in layers[1]  # the 1-channel stem; 6 channels
  for row in layers:
    assert float(row.split('|')[4]) > 0 and row.split('|')[6].strip().endswith('x')


def test_unknown_section_is_an_error(benchmark):
  with pytest.raises(SystemExit):
    benchmark.main(['--tiny', '--sections=gpu'])


# ----------------------------------------------------------------------------- PyTorch reference
# Correct code agrees to ~1e-6; 2e-5 still fails subtle slips (exact instead of tanh GELU in the
# crossattn MLPs gives ~1.5e-4 at init), where the looser 1e-4 would not reliably.
LOGITS_TOLERANCE = 2e-5


@pytest.fixture(scope='module')
def torch_reference(benchmark):
  pytest.importorskip('torch')
  return benchmark._torch_reference()  # pylint: disable=protected-access


@pytest.mark.parametrize('fusion', ['concat', 'crossattn'])
def test_torch_reference_has_the_jax_parameter_count(torch_reference, fusion):
  assert torch_reference.count_params(fusion=fusion) == torch_reference.jax_count_params(fusion)


def test_torch_crossattn_logits_match_jax(torch_reference, benchmark):
  """Same weights and BatchNorm statistics -> same logits (eval mode)."""
  batch = benchmark.random_batches(2, 1, seed=1)[0]
  diff = torch_reference.logits_max_abs_diff(batch, fusion='crossattn')
  assert diff < LOGITS_TOLERANCE


def _jax_trajectory(benchmark, fusion, steps=4):
  batches = benchmark.random_batches(8, 2, seed=1)
  return (batches, *benchmark.jax_loss_trajectory(fusion, batches, steps))


@pytest.fixture(scope='module')
def crossattn_trajectory(benchmark):
  return _jax_trajectory(benchmark, 'crossattn')


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


@pytest.mark.xfail(strict=True, reason=(
    'JAX side: under jit the concat model\'s audio gradient below the last stage differs from '
    'eager JAX and from PyTorch (both agree to 1e-6); it is right with conv.max_pool_2x2 or '
    'the shifted conv swapped for lax. Likely: the masked max-pool gradient compares the '
    'conv output recomputed inside a fusion with its saved max, and they differ in the last '
    'bit. Remove this mark when fixed.'))
def test_torch_concat_follows_the_jax_loss_trajectory(torch_reference, benchmark):
  batches, losses, variables = _jax_trajectory(benchmark, 'concat')
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
def test_tiny_torch_comparison_runs_pinned_workers(benchmark, torch_reference, tmp_path):
  """The harness end to end at tiny size: parity rows, then per-variant and summary rows
  from separate worker processes (no timing assertions)."""
  out = tmp_path / 'perf.md'
  assert benchmark.main(['--tiny', '--sections=torch', f'--out={out}']) == 0
  rows = [r for r in _rows(out.read_text(), 'Training throughput vs PyTorch')
          if not r.startswith('| model |')]  # the section's later tables' headers
  summary, parity, variants = rows[0], rows[1:3], rows[3:]
  assert summary.startswith('| crossattn | 8 |') and '(eager' in summary
  assert [r.split('|')[4].strip() for r in parity] == ['ok', 'ok']
  assert [r.split('|')[3].strip() for r in variants] == ['eager', 'eager+channels_last']
  for row in variants:
    assert re.search(r'\d+\.\d\dx \(\d+\.\d\d-\d+\.\d\d\) \|$', row), row
  assert 'SGD(fused=True)' in out.read_text() and 'pinned to cores' in out.read_text()


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
