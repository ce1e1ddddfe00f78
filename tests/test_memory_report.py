"""scripts/memory_report.py reads XLA's memory and cost analysis of the compiled train step:
under fsdp each device holds about half the parameters and optimizer state on two devices,
and the temporaries grow with the batch while the state does not."""
import json
import os
import subprocess
import sys

from conftest import REPO


def test_fsdp_halves_the_state_per_device_and_temporaries_grow_with_the_batch(tmp_path):
  rows_path = tmp_path / 'rows.json'
  out = subprocess.run(
      ['timeout', '-s', 'KILL', '400', sys.executable,
       os.path.join(REPO, 'scripts', 'memory_report.py'),
       '--config=experiments/synthetic.py:size=tiny', '--devices=2', '--batches=2,16',
       '--layouts=data,fsdp', '--set=train.fsdp_min_size=1', f'--json={rows_path}'],
      cwd=REPO, capture_output=True, text=True, env={**os.environ, 'XLA_FLAGS': ''})
  assert out.returncode == 0, out.stderr[-3000:]
  assert '| fsdp | 16 |' in out.stdout
  rows = {(r['layout'], r['batch']): r for r in json.loads(rows_path.read_text())}
  assert set(rows) == {('data', 2), ('data', 16), ('fsdp', 2), ('fsdp', 16)}
  for part in ('params', 'opt_state'):
    ratio = rows[('fsdp', 2)][part] / rows[('data', 2)][part]
    assert 0.5 <= ratio < 0.6, (part, ratio)  # arrays with no even dimension stay whole
    assert rows[('data', 16)][part] == rows[('data', 2)][part]
  assert rows[('data', 16)]['temp'] > rows[('data', 2)]['temp'] > 0
  for r in rows.values():
    assert r['total'] >= r['params'] + r['opt_state'] + r['temp']
    assert r['gflop_per_example'] > 0


def test_remat_keeps_fewer_activations_for_more_flops(tmp_path):
  """The saved-activations column (JAX's residuals, what remat trades) falls with remat and
  XLA counts the recomputed forward pass in the FLOPs."""
  rows_path = tmp_path / 'rows.json'
  out = subprocess.run(
      ['timeout', '-s', 'KILL', '400', sys.executable,
       os.path.join(REPO, 'scripts', 'memory_report.py'),
       '--config=experiments/base.py:size=tiny', '--devices=1', '--batches=4',
       '--layouts=data,fsdp+remat', f'--json={rows_path}'],
      cwd=REPO, capture_output=True, text=True, env={**os.environ, 'XLA_FLAGS': ''})
  assert out.returncode == 0, out.stderr[-3000:]
  data, remat = json.loads(rows_path.read_text())
  assert (data['layout'], remat['layout']) == ('data', 'fsdp+remat')
  assert 0 < remat['saved_activations'] < data['saved_activations'] / 3
  assert remat['gflop_per_example'] > 1.1 * data['gflop_per_example']
  assert remat['params'] == data['params']  # one device: fsdp shards nothing
