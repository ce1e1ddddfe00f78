"""Multi-host: two local processes (jax.distributed, coordinator on 127.0.0.1, gloo CPU
collectives, 2 CPU devices each) train the same global batches as one process and end with
the same parameters. Each process feeds only its own rows of every global batch.

Both processes run the real entry point, `python -m crossmodal.main --num_processes=2 ...`,
under a hard timeout that SIGKILLs them (a hung collective ignores SIGTERM).
"""
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np
import pytest

from crossmodal import files
from crossmodal import train
from conftest import REPO, SYNTHETIC, free_port, tiny_config

NUM_STEPS = 6
TIMEOUT = 300


def _config():
  return tiny_config(f'size=tiny,steps={NUM_STEPS}')


def _launch_two_processes(workdir, extra=()):
  port = free_port()
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=2',
         'JAX_PLATFORMS': 'cpu', 'JAX_CPU_COLLECTIVES_IMPLEMENTATION': 'gloo'}
  procs = []
  for pid in range(2):
    cmd = [sys.executable, '-m', 'crossmodal.main',
           f'--config={SYNTHETIC}:size=tiny,steps={NUM_STEPS}', f'--workdir={workdir}',
           '--mode=train', '--num_processes=2', f'--process_id={pid}',
           f'--coordinator_address=127.0.0.1:{port}', *extra]
    procs.append(subprocess.Popen(cmd, cwd=REPO, env=env, stdout=subprocess.PIPE,
                                  stderr=subprocess.PIPE, text=True, start_new_session=True))
  deadline = time.monotonic() + TIMEOUT
  outputs = []
  try:
    for p in procs:
      outputs.append(p.communicate(timeout=max(1.0, deadline - time.monotonic())))
  except subprocess.TimeoutExpired:
    for p in procs:
      if p.poll() is None:
        os.killpg(p.pid, signal.SIGKILL)
    errs = [p.communicate()[1][-2000:] for p in procs]
    pytest.fail(f'two-process run timed out after {TIMEOUT}s (deadlock?): {errs}')
  return [(p.returncode, out, err) for p, (out, err) in zip(procs, outputs)]


# The second case shards parameters and optimizer state over all 4 devices of both
# processes (parallel.py), so every step gathers them across the two hosts.
@pytest.mark.slow
@pytest.mark.parametrize('extra', [(), ('--config.train.mesh=fsdp:4',
                                        '--config.train.fsdp_min_size=256')],
                         ids=['data_parallel', 'fsdp_across_hosts'])
def test_two_processes_match_one_process(tmp_path, extra):
  workdir = tmp_path / 'two'
  results = _launch_two_processes(workdir, extra)
  for i, (code, _, err) in enumerate(results):
    assert code == 0, f'process {i} failed:\n{err[-4000:]}'
    mesh = "mesh {'data': 1, 'fsdp': 4}" if extra else "mesh {'data': 4, 'fsdp': 1}"
    assert mesh in err, err[-2000:]
  # Process 0 alone writes the metrics file: one record per step and split.
  records = files.read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
  keys = [(r['split'], r['step']) for r in records]
  assert len(keys) == len(set(keys)) and ('train', NUM_STEPS) in keys

  config = _config()
  one = train.train_and_evaluate(config, str(tmp_path / 'one'))  # 1 process, 1 device
  _, two, meta = train.restore_state(config, str(workdir), 'latest')
  assert meta['step'] == NUM_STEPS and meta['process_count'] == 2 and meta['device_count'] == 4
  for part in ('params', 'batch_stats'):
    for x, y in zip(jax.tree.leaves(getattr(two, part)), jax.tree.leaves(getattr(one.state, part))):
      np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-4, atol=1e-5)
  val = [r for r in records if r['split'] == 'validation' and r['step'] == NUM_STEPS][0]
  assert val['num_examples'] == one.metrics['validation']['num_examples']
  assert val['loss'] == pytest.approx(one.metrics['validation']['loss'], rel=1e-4)
