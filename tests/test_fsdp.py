"""Parameter and optimizer-state sharding over an 'fsdp' mesh axis (parallel.py, jit path):
the sharding rule, equal losses to plain data parallelism on 8 simulated CPU devices, and
checkpoints that move bitwise between an fsdp layout, a 2x4 mesh, 8 replicated devices and 1
device. The 8-device part runs in a subprocess under a hard timeout (test_parallel.py)."""
import json
import os
import sys

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from crossmodal import config_utils
from crossmodal import parallel
from crossmodal import train
from conftest import SYNTHETIC, assert_trees_bitwise_equal, tiny_config
from test_parallel import run_with_hard_timeout

NUM_STEPS = 6
MIN_SIZE = 256  # small enough that the tiny model has sharded arrays

_SCRIPT = r'''
import json, sys
import jax
import numpy as np
from crossmodal import config_utils, train
assert jax.device_count() == 8, jax.devices()
synthetic, root = sys.argv[1], sys.argv[2]

def config(mesh):
  c = config_utils.load_config_file(synthetic + ':size=tiny,steps=%d')
  c.train.update(mesh=mesh, fsdp_min_size=%d)
  return c

out = {}
for name, mesh in (('data', ''), ('fsdp', 'data:2,fsdp:4')):
  result = train.train_and_evaluate(config(mesh), f'{root}/{name}')
  out[name] = {'train_loss': [r['loss'] for r in
                              map(json.loads, open(f'{root}/{name}/metrics.jsonl'))
                              if r['split'] == 'train'],
               'validation': result.metrics['validation']['loss']}
  if name == 'fsdp':
    params = result.state.params
    specs = {jax.tree_util.keystr(p): str(x.sharding.spec)
             for p, x in jax.tree_util.tree_flatten_with_path(result.state)[0]}
    shards = {jax.tree_util.keystr(p): [list(x.shape), list(x.addressable_shards[0].data.shape)]
              for p, x in jax.tree_util.tree_flatten_with_path(result.state)[0]}
    out['specs'], out['shards'] = specs, shards
    final = jax.tree.map(np.asarray, result.state)
    np.savez(f'{root}/fsdp_final.npz', *jax.tree.leaves(final))
# The fsdp checkpoint restored onto other layouts of these 8 devices: bitwise the final state.
for mesh in ('', 'data:2,fsdp:4', 'fsdp:8', 'data:4,fsdp:2'):
  _, state, _ = train.restore_state(config(mesh), f'{root}/fsdp', 'latest')
  leaves = [np.asarray(x) for x in jax.tree.leaves(state)]
  ref = np.load(f'{root}/fsdp_final.npz')
  out[f'bitwise_on_{mesh or "data:8"}'] = all(
      a.dtype == ref[f'arr_{i}'].dtype and a.tobytes() == ref[f'arr_{i}'].tobytes()
      for i, a in enumerate(leaves))
# A 1-device checkpoint (written by the test process) evaluated under fsdp.
out['one_device_ckpt_fsdp'] = train.evaluate(config('data:2,fsdp:4'), f'{root}/one', 'latest')
print('RESULT ' + json.dumps(out))
''' % (NUM_STEPS, MIN_SIZE)


def test_fsdp_spec_splits_the_largest_divisible_dimension_of_large_arrays():
  assert parallel.fsdp_spec((64, 256), 4, 1000) == P(None, 'fsdp')
  assert parallel.fsdp_spec((256, 64), 4, 1000) == P('fsdp')
  assert parallel.fsdp_spec((6, 255), 4, 1000) == P()  # no dimension divides
  assert parallel.fsdp_spec((255, 8), 4, 1000) == P(None, 'fsdp')  # the largest that does
  assert parallel.fsdp_spec((16, 16), 4, 1000) == P()  # below the size threshold
  assert parallel.fsdp_spec((64, 256), 1, 1) == P()  # no fsdp axis
  assert parallel.fsdp_spec((), 4, 0) == P()


def test_parse_mesh_and_config_errors():
  assert parallel.parse_mesh('', 8) == {'data': 8, 'fsdp': 1}
  assert parallel.parse_mesh('fsdp:4', 8) == {'data': 2, 'fsdp': 4}
  assert parallel.parse_mesh('data:2,fsdp:4', 8) == {'data': 2, 'fsdp': 4}
  for bad, why in (('fsdp:3', 'multiple of 3'), ('data:2,fsdp:2', 'has 4 devices'),
                   ('model:2', 'is not <axis>:<size>'), ('fsdp:0', 'is not <axis>:<size>')):
    with pytest.raises(ValueError, match=why):
      parallel.parse_mesh(bad, 8)
  c = tiny_config()
  c.train.update(mesh='data:2,fsdp:4', parallel='pmap')
  with pytest.raises(config_utils.ConfigError, match='needs config.train.parallel=.jit.'):
    config_utils.validate(c, 8, 1)
  c.train.update(mesh='fsdp:x', parallel='jit')
  with pytest.raises(config_utils.ConfigError, match='fsdp:x'):
    config_utils.validate(c)


@pytest.mark.slow
def test_fsdp_on_8_devices_equals_data_parallel_and_checkpoints_move_bitwise(tmp_path):
  one_config = tiny_config(f'size=tiny,steps={NUM_STEPS}')
  one = train.train_and_evaluate(one_config, str(tmp_path / 'one'))
  env = {**os.environ, 'XLA_FLAGS': '--xla_force_host_platform_device_count=8',
         'JAX_PLATFORMS': 'cpu'}
  code, out, err = run_with_hard_timeout(
      [sys.executable, '-c', _SCRIPT, SYNTHETIC, str(tmp_path)], env, timeout=500)
  assert code == 0, err[-3000:]
  result = json.loads(next(l for l in out.splitlines() if l.startswith('RESULT '))[7:])

  # The state really is sharded: kernels over 'fsdp', a quarter per device; small ones whole.
  sharded = [k for k, spec in result['specs'].items() if 'fsdp' in spec]
  assert any('params' in k for k in sharded) and any('opt_state' in k for k in sharded)
  for k in sharded:
    (shape, shard) = result['shards'][k]
    assert np.prod(shard) * 4 == np.prod(shape), k
  for k, spec in result['specs'].items():
    if np.prod(result['shards'][k][0]) < MIN_SIZE:
      assert 'fsdp' not in spec, k
  # Same losses as data parallelism on the same 8 devices, to float tolerance.
  np.testing.assert_allclose(result['fsdp']['train_loss'], result['data']['train_loss'],
                             rtol=1e-5)
  assert result['fsdp']['validation'] == pytest.approx(result['data']['validation'], rel=1e-5)
  # Checkpoints move between layouts bitwise: fsdp -> data:8, 2x4, fsdp:8, 4x2 (in the
  # subprocess) and -> 1 device (here); 1 device -> fsdp evaluates to the 1-device numbers.
  assert [k for k in result if k.startswith('bitwise_on_') and not result[k]] == []
  _, restored, meta = train.restore_state(one_config, str(tmp_path / 'fsdp'), 'latest')
  assert meta['device_count'] == 8 and meta['step'] == NUM_STEPS
  ref = np.load(tmp_path / 'fsdp_final.npz')
  assert_trees_bitwise_equal(jax.tree.leaves(restored),
                             [ref[f'arr_{i}'] for i in range(len(ref.files))])
  for split in ('validation', 'test'):
    got = result['one_device_ckpt_fsdp'][split]
    assert got['confusion_matrix'] == one.metrics[split]['confusion_matrix']
    assert got['loss'] == pytest.approx(one.metrics[split]['loss'], rel=1e-5)
