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


def test_saved_activations_fall_with_remat():
  """The saved-activations column (JAX's residuals of the loss's VJP, traced, not compiled):
  what remat trades for FLOPs. With 'full' only each layer's input is kept."""
  import jax  # pylint: disable=import-outside-toplevel
  from crossmodal import config_utils, optim, train  # pylint: disable=import-outside-toplevel
  report = config_utils.load_module(os.path.join(REPO, 'scripts', 'memory_report.py'),
                                    'memory_report')
  saved = {}
  for remat in ('none', 'full'):
    config = config_utils.load_config_file(
        os.path.join(REPO, 'experiments', 'base.py') + f':size=tiny,remat={remat}')
    model = train.build_model(config, 10, axis_name=None)
    batch = report.batch_shapes(config, 4)
    init = train.make_init_fn(model, optim.make_optimizer(config.optim, 10), batch)
    shapes = jax.eval_shape(init, jax.random.PRNGKey(0))
    saved[remat] = report.saved_activation_bytes(model, shapes, batch)
  assert 0 < saved['full'] < saved['none'] / 3, saved
