r"""Per-device memory and FLOPs of a config's training step from XLA's own analyses of the
compiled step (no timing, deterministic): data parallel, fsdp, and fsdp with remat.

  python scripts/memory_report.py --config=experiments/base.py --devices=8 \
      --batches=1,4,16 --out=runs/memory/base.md

For each layout and per-device batch the script builds the abstract train state (nothing is
initialised), lowers and compiles the jitted train step for `--devices` simulated CPU devices
with the state and batch shardings training uses (parallel.JitParallel), and reads:
  parameters, optimizer state  bytes of this device's shards (from the shardings)
  saved activations            what the forward pass keeps for the backward pass (JAX's
                               residuals of the loss's VJP, the arguments not counted): the
                               memory remat trades for FLOPs, independent of the compiler
  temporaries                  compiled.memory_analysis().temp_size_in_bytes
  total                        argument + output - aliased (donated state) + temporaries: what
                               one device holds at the step's peak in XLA's buffer assignment
  GFLOP per example            compiled.cost_analysis()['flops'] of one device's program,
                               divided by the per-device batch
This is XLA's CPU buffer assignment: a TPU or GPU compiler fuses and schedules differently,
so read the totals as estimates of an accelerator's, and the differences between layouts as
the point. XLA's CPU compiler drops remat's optimization barriers (none is left in the
compiled HLO) and its temporaries hardly fall with remat, while the FLOPs show the
recomputation: the saved-activations column shows what remat removes.
The 'fits' columns compare the total with 16 and 32 GB (GiB here, 2^30 bytes) with nothing
else on the device.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time


def _parse():
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('--config', default='experiments/base.py', help='path[:preset args]')
  p.add_argument('--devices', type=int, default=8)
  p.add_argument('--batches', default='1,4,16', help='per-device batch sizes')
  p.add_argument('--layouts', default='data,fsdp,fsdp+remat',
                 help='data: replicated state; fsdp: mesh fsdp:<devices>; fsdp+remat: also '
                      "config.model.remat='full'")
  p.add_argument('--set', action='append', default=[], metavar='KEY=VALUE',
                 help='a config override, as --config.KEY=VALUE (repeatable), e.g. '
                      'train.fsdp_min_size=1024')
  p.add_argument('--out', default='', help='also write the table (markdown) here')
  p.add_argument('--json', default='', help='also write the rows (bytes, FLOPs) as JSON here')
  return p.parse_args()


ARGS = _parse() if __name__ == '__main__' else None
if ARGS is not None:  # before JAX starts
  os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '') +
                             f' --xla_force_host_platform_device_count={ARGS.devices}')
  os.environ.setdefault('JAX_PLATFORMS', 'cpu')

import jax  # pylint: disable=wrong-import-position
import jax.numpy as jnp  # pylint: disable=wrong-import-position
import numpy as np  # pylint: disable=wrong-import-position
# Not public: jax.ad_checkpoint only prints it. jax is pinned (pyproject.toml) and
# tests/test_memory_report.py runs this.
from jax._src.ad_checkpoint import saved_residuals  # pylint: disable=wrong-import-position

from crossmodal import config_utils  # pylint: disable=wrong-import-position
from crossmodal import optim  # pylint: disable=wrong-import-position
from crossmodal import parallel  # pylint: disable=wrong-import-position
from crossmodal import train  # pylint: disable=wrong-import-position

GIB = 1 << 30
LAYOUTS = {'data': ('', 'none'), 'fsdp': ('fsdp:{n}', 'none'), 'fsdp+remat': ('fsdp:{n}', 'full')}


def batch_shapes(config, batch: int) -> dict[str, jax.ShapeDtypeStruct]:
  """The training batch of `config.data.synthetic` (image, audio, text, label)."""
  p = config.data.synthetic
  shapes = {'image': ((batch, p.image_size, p.image_size, 1), jnp.uint8),
            'audio': ((batch, p.audio_length), jnp.float32),
            'text': ((batch, p.text_length), jnp.int32), 'label': ((batch,), jnp.int32)}
  return {k: jax.ShapeDtypeStruct(*v) for k, v in shapes.items()
          if k == 'label' or k in config.model.modalities}


def shard_bytes(tree) -> int:
  return int(sum(np.prod(x.sharding.shard_shape(x.shape), dtype=np.int64) * x.dtype.itemsize
                 for x in jax.tree.leaves(tree)))


def saved_activation_bytes(model, shapes, batch) -> int:
  """Bytes the forward pass of one device's batch keeps for the backward pass (traced, not
  compiled): the residuals of the loss's VJP other than its arguments."""
  def loss(params, batch_stats, batch):
    out, _ = model.apply(train._variables(params, batch_stats), batch,  # pylint: disable=protected-access
                         train=True, rngs={'dropout': jax.random.PRNGKey(0)},
                         mutable=['batch_stats'])
    return sum(jnp.sum(x) for x in jax.tree.leaves(out))
  residuals = saved_residuals(loss, shapes.params, shapes.batch_stats, batch)
  return int(sum(np.prod(aval.shape, dtype=np.int64) * aval.dtype.itemsize
                 for aval, source in residuals if not source.startswith('from the argument')))


def analyse(config, layout: str, per_device_batch: int, num_classes: int = 10) -> dict:
  """One compiled train step's per-device numbers."""
  mesh, remat = LAYOUTS[layout]
  config = config_utils.apply_overrides(config, {'train.mesh': mesh.format(n=jax.device_count()),
                                                 'model.remat': remat})
  strategy = parallel.JitParallel(parallel.make_mesh(mesh=config.train.mesh),
                                  config.train.fsdp_min_size)
  model = train.build_model(config, num_classes, axis_name=None)
  tx = optim.make_optimizer(config.optim, config.train.num_steps)
  batch = batch_shapes(config, per_device_batch * jax.device_count())
  init = train.make_init_fn(model, tx, batch)
  shapes = jax.eval_shape(init, jax.random.PRNGKey(0))
  saved = saved_activation_bytes(model, shapes, batch_shapes(config, per_device_batch))
  state = jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                       shapes, strategy.state_sharding(shapes))
  batch = {k: jax.ShapeDtypeStruct(v.shape, v.dtype, sharding=strategy.batch_sharding)
           for k, v in batch.items()}
  step = strategy.train_step(train.make_train_step(model, tx, None, objectives=config.get(
      'objectives')), state)
  start = time.perf_counter()
  compiled = step.lower(state, batch).compile()
  compile_s = time.perf_counter() - start
  memory = compiled.memory_analysis()
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  total = (memory.argument_size_in_bytes + memory.output_size_in_bytes
           - memory.alias_size_in_bytes + memory.temp_size_in_bytes)
  return {'layout': layout, 'batch': per_device_batch, 'params': shard_bytes(state.params),
          'opt_state': shard_bytes(state.opt_state), 'saved_activations': saved,
          'temp': memory.temp_size_in_bytes,
          'total': total, 'gflop_per_example': cost.get('flops', float('nan')) / 1e9
          / per_device_batch, 'compile_s': compile_s}


def table(rows) -> str:
  gib = lambda b: f'{b / GIB:.2f}'
  lines = ['| layout | per-device batch | parameters (GiB) | optimizer state (GiB) | '
           'saved activations (GiB) | temporaries (GiB) | total (GiB) | fits 16 GB | '
           'fits 32 GB | GFLOP / example |', '|---|---|---|---|---|---|---|---|---|---|']
  for r in rows:
    lines.append(f"| {r['layout']} | {r['batch']} | {gib(r['params'])} | "
                 f"{gib(r['opt_state'])} | {gib(r['saved_activations'])} | {gib(r['temp'])} | "
                 f"{gib(r['total'])} | "
                 f"{'yes' if r['total'] <= 16 * GIB else 'no'} | "
                 f"{'yes' if r['total'] <= 32 * GIB else 'no'} | "
                 f"{r['gflop_per_example']:.1f} |")
  return '\n'.join(lines)


def main(args) -> int:
  config = config_utils.load_config_file(args.config)
  for item in args.set:
    key, _, value = item.partition('=')
    default = config
    for part in key.split('.'):
      default = default[part]
    config_utils.apply_overrides(  # converted as a preset value is
        config, {key: config_utils._convert(key, value, default)})  # pylint: disable=protected-access
  rows = []
  for layout in args.layouts.split(','):
    if layout not in LAYOUTS:
      print(f'error: --layouts: {layout!r}; valid: {list(LAYOUTS)}', file=sys.stderr)
      return 2
    for b in [int(x) for x in args.batches.split(',')]:
      rows.append(analyse(config, layout, b))
      print(f'# {layout} batch {b}: compiled in {rows[-1]["compile_s"]:.0f} s', flush=True)
  header = (f'{args.config} on {jax.device_count()} {jax.devices()[0].platform.upper()} '
            f'devices, jax {jax.__version__}')
  text = header + '\n\n' + table(rows) + '\n'
  print(text)
  if args.json:
    with open(args.json, 'w', encoding='utf-8') as f:
      json.dump(rows, f, indent=1)
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w', encoding='utf-8') as f:
      f.write(text)
  return 0


if __name__ == '__main__':
  sys.exit(main(ARGS))
