"""Data parallelism: jit+mesh and pmap give the same parameters on 8 simulated CPU devices,
both match a 1-device run, and checkpoints move between 8 devices and 1 device.

The 8-device part runs in a subprocess (XLA_FLAGS must be set before JAX starts) with a hard
timeout. `train.sync_every_step='auto'` blocks on every step on CPU, which is what keeps 8 fake
devices on 2 cores from deadlocking in XLA's CPU all-reduce (see parallel.py / NOTES.md).
"""
import json
import os
import signal
import subprocess
import sys

import jax
import numpy as np
import pytest

from crossmodal import parallel
from crossmodal import train
from conftest import REPO, SYNTHETIC, tiny_config

NUM_STEPS = 6

_EIGHT_DEVICE_SCRIPT = r'''
import json, sys
import jax
from crossmodal import config_utils, train
assert jax.device_count() == 8, jax.devices()

def config(parallel_mode):
  c = config_utils.load_config_file(sys.argv[1] + ':size=tiny,steps=%d')
  c.train.parallel = parallel_mode
  return c

out = {}
for mode, workdir in (('jit', sys.argv[2]), ('pmap', sys.argv[3])):
  result = train.train_and_evaluate(config(mode), workdir)
  out[mode] = {s: m['loss'] for s, m in result.metrics.items()}
# A checkpoint written on 1 device (by the test process), evaluated on 8.
out['one_device_ckpt_on_8'] = train.evaluate(config('jit'), sys.argv[4], 'latest')
print('RESULT ' + json.dumps(out))
''' % NUM_STEPS


def _config(mode='jit'):
  c = tiny_config(f'size=tiny,steps={NUM_STEPS}')
  c.train.parallel = mode
  return c


def run_with_hard_timeout(cmd, env, timeout):
  """Runs `cmd` in its own process group; SIGKILLs the whole group on timeout.

  A deadlocked XLA collective ignores SIGTERM, hence SIGKILL.
  """
  proc = subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, start_new_session=True)
  try:
    out, err = proc.communicate(timeout=timeout)
  except subprocess.TimeoutExpired:
    os.killpg(proc.pid, signal.SIGKILL)
    out, err = proc.communicate()
    pytest.fail(f'timed out after {timeout}s (deadlock?): {err[-3000:]}')
  return proc.returncode, out, err


def _params(workdir, mode):
  _, state, meta = train.restore_state(_config(mode), workdir, 'latest')
  assert meta['step'] == NUM_STEPS
  assert meta['device_count'] == 8
  return state


def _max_rel_diff(a, b):
  worst = 0.0
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    x, y = np.asarray(x, np.float64), np.asarray(y, np.float64)
    worst = max(worst, float(np.max(np.abs(x - y) / (np.abs(y) + 1e-3))))
  return worst


@pytest.mark.slow
def test_jit_and_pmap_on_8_devices_match_each_other_and_one_device(tmp_path):
  # Reference: the same config on this process's single CPU device.
  one = train.train_and_evaluate(_config('jit'), str(tmp_path / 'one'))

  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=8',
         'JAX_PLATFORMS': 'cpu'}
  code, out, err = run_with_hard_timeout(
      [sys.executable, '-c', _EIGHT_DEVICE_SCRIPT, SYNTHETIC, str(tmp_path / 'jit'),
       str(tmp_path / 'pmap'), str(tmp_path / 'one')], env, timeout=400)
  assert code == 0, err[-3000:]
  result = json.loads(next(l for l in out.splitlines() if l.startswith('RESULT '))[7:])

  # 8-device checkpoints restore onto this 1-device process.
  jit_state, pmap_state = _params(tmp_path / 'jit', 'jit'), _params(tmp_path / 'pmap', 'pmap')
  for part in ('params', 'batch_stats', 'opt_state'):
    a, b = getattr(jit_state, part), getattr(pmap_state, part)
    assert jax.tree.structure(a) == jax.tree.structure(b)
    jit_vs_pmap, jit_vs_one = _max_rel_diff(a, b), _max_rel_diff(a, getattr(one.state, part))
    print(f'{part}: max relative difference jit/pmap {jit_vs_pmap:.2e}, '
          f'8 devices/1 device {jit_vs_one:.2e}')
    assert jit_vs_pmap < 1e-4, part  # same math, different reduction order
    assert jit_vs_one < 1e-4, part
  assert int(jit_state.step) == int(pmap_state.step) == NUM_STEPS
  for split in ('validation', 'test'):
    assert result['jit'][split] == pytest.approx(result['pmap'][split], rel=1e-4)
    assert result['jit'][split] == pytest.approx(one.metrics[split]['loss'], rel=1e-4)
    # The 1-device checkpoint evaluated on 8 devices gives the 1-device numbers.
    on8 = result['one_device_ckpt_on_8'][split]
    assert on8['confusion_matrix'] == one.metrics[split]['confusion_matrix']
    assert on8['loss'] == pytest.approx(one.metrics[split]['loss'], rel=1e-5)


def test_sync_setting():
  assert parallel.resolve_sync_every_step('on') is True
  assert parallel.resolve_sync_every_step('off') is False
  assert parallel.resolve_sync_every_step('auto') is (jax.default_backend() == 'cpu'
                                                      and jax.device_count() > 1)
  with pytest.raises(ValueError, match=r"valid choices: \('auto', 'on', 'off'\)"):
    parallel.resolve_sync_every_step('sometimes')


def test_make_parallel_rejects_unknown_mode():
  with pytest.raises(ValueError, match=r"config.train.parallel='dp'; valid choices: "
                     r"\('jit', 'pmap'\)"):
    parallel.make_parallel('dp')


def test_initialize_distributed_only_when_configured(monkeypatch):
  for var in ('JAX_COORDINATOR_ADDRESS', 'JAX_NUM_PROCESSES', 'JAX_PROCESS_ID',
              'TPU_WORKER_HOSTNAMES'):
    monkeypatch.delenv(var, raising=False)
  assert parallel.initialize_distributed() is False
  assert parallel.initialize_distributed(num_processes=1) is False
  with pytest.raises(ValueError, match='needs --coordinator_address'):
    parallel.initialize_distributed(num_processes=2)


def test_jit_strategy_shards_batch_and_replicates_state():
  s = parallel.make_parallel('jit')
  batch = s.put_batch({'x': np.arange(8.0).reshape(4, 2)})
  assert batch['x'].sharding.spec == jax.sharding.PartitionSpec(('data', 'fsdp'))
  state = s.put_state({'w': np.ones((3,))})
  assert state['w'].sharding.is_fully_replicated
  p = parallel.make_parallel('pmap')
  split = p.put_batch({'x': np.zeros((4 * jax.local_device_count(), 2))})
  assert split['x'].shape == (jax.local_device_count(), 4, 2)
  back = p.global_state(p.put_state({'w': np.arange(3.0)}))
  np.testing.assert_array_equal(back['w'], np.arange(3.0))
  assert back['w'].sharding.is_fully_replicated
