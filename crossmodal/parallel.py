"""Data parallelism over every device of every host: `jax.jit` + mesh (default) or `pmap`.

Both strategies expose the same small interface so the training loop is written once:
`put_state` / `put_batch` move host data onto devices, `train_step` / `eval_step` compile a
step function, and `global_state` returns the state as global arrays on the mesh in the
layout checkpoints use: replicated, or sharded over 'fsdp' (`state_sharding`).

- `JitParallel` (default): one `Mesh` over `jax.devices()` with axes ('data', 'fsdp'); the
  batch is sharded over both axes. By default 'fsdp' has size 1 and every parameter and
  optimizer-state array is replicated (plain data parallelism). With `config.train.mesh`,
  e.g. 'data:2,fsdp:4', each array of the train state with at least `fsdp_min_size` elements
  is split along its largest dimension that the fsdp size divides (big_vision's fsdp rule),
  so each device holds 1/fsdp of the parameters and optimizer state (FSDP / ZeRO-3); XLA
  gathers them where the step needs them. BatchNorm statistics are computed over the global
  batch either way.
- `PmapParallel`: the same step under `jax.pmap(axis_name='data')`; the step function averages
  gradients with `lax.pmean` and the model is built with `axis_name='data'` so BatchNorm
  averages its statistics across devices. With equal shards this computes the same numbers
  as the jit path (tested to a tight tolerance; dropout masks differ because keys are per
  device).

Multi-host: call `initialize_distributed` first; every process then feeds its own slice of
the global batch and `jax.make_array_from_process_local_data` assembles the global array.
"""
from __future__ import annotations

import os
from typing import Any, Callable

from absl import logging
import flax.jax_utils
import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

AXIS = 'data'
FSDP_AXIS = 'fsdp'
MESH_AXES = (AXIS, FSDP_AXIS)
PARALLEL_MODES = ('jit', 'pmap')
SYNC_CHOICES = ('auto', 'on', 'off')


def initialize_distributed(coordinator_address: str | None = None,
                           num_processes: int | None = None,
                           process_id: int | None = None,
                           auto_detect: bool = False) -> bool:
  """Starts `jax.distributed` when more than one process is configured; returns whether it did.

  Configured means: explicit arguments (main.py flags), or the environment variables
  JAX_COORDINATOR_ADDRESS + JAX_NUM_PROCESSES + JAX_PROCESS_ID, or `auto_detect` (main.py's
  --distributed: JAX detects the cluster itself on Cloud TPU VMs, Slurm and Open MPI; what
  scripts/tpu_vm.py passes), or a multi-host Cloud TPU VM whose environment lists several
  TPU_WORKER_HOSTNAMES. A plain single machine needs nothing and is left alone. Must run
  before any other JAX call.
  """
  env = os.environ
  coordinator_address = coordinator_address or env.get('JAX_COORDINATOR_ADDRESS')
  if num_processes is None and env.get('JAX_NUM_PROCESSES'):
    num_processes = int(env['JAX_NUM_PROCESSES'])
  if process_id is None and env.get('JAX_PROCESS_ID'):
    process_id = int(env['JAX_PROCESS_ID'])
  if num_processes is not None and num_processes > 1:
    if coordinator_address is None or process_id is None:
      raise ValueError(
          f'num_processes={num_processes} needs --coordinator_address (host:port of process 0) '
          'and --process_id (0..num_processes-1), or the env variables '
          'JAX_COORDINATOR_ADDRESS / JAX_PROCESS_ID.')
    jax.distributed.initialize(coordinator_address=coordinator_address,
                               num_processes=num_processes, process_id=process_id)
    return True
  hosts = env.get('TPU_WORKER_HOSTNAMES', '')
  if auto_detect or len([h for h in hosts.split(',') if h]) > 1:
    jax.distributed.initialize()  # Cloud TPU VM slice: JAX auto-detects the cluster.
    return True
  return False


def resolve_sync_every_step(setting: str) -> bool:
  """`train.sync_every_step`: 'on', 'off' or 'auto' (= on for the CPU backend with more than
  one device in the run).

  Why: with more simulated CPU devices than cores, steps dispatched without waiting can
  deadlock in XLA's CPU all-reduce rendezvous (docs/architecture.md). Blocking on each train step's loss
  and each eval step's accumulator is the setting that is reliable here: the tests run jit
  and pmap on 8 CPU devices and 2 processes x 2 devices with it. On GPU/TPU the sync would
  only cost throughput, so 'auto' leaves it off there, as on a single CPU device (no
  collectives, and the host can prepare the next step while this one runs).
  """
  if setting not in SYNC_CHOICES:
    raise ValueError(f'config.train.sync_every_step={setting!r}; valid choices: {SYNC_CHOICES}')
  if setting == 'auto':
    return jax.default_backend() == 'cpu' and jax.device_count() > 1
  return setting == 'on'


def parse_mesh(spec: str, device_count: int | None) -> dict[str, int]:
  """`config.train.mesh` -> {'data': n, 'fsdp': m} with n * m == device_count.

  '' = all devices on 'data'; 'fsdp:8' or 'data:2,fsdp:4' (an axis left out takes the
  devices the other leaves). ValueError naming what is wrong. device_count=None checks the
  syntax only (an axis left out then has size 0: not known yet).
  """
  sizes = {}
  for item in [i.strip() for i in spec.split(',') if i.strip()]:
    name, _, size = item.partition(':')
    if name not in MESH_AXES or not size.isdigit() or int(size) < 1 or name in sizes:
      raise ValueError(f'config.train.mesh={spec!r}: {item!r} is not <axis>:<size>; axes '
                       f'{MESH_AXES}, each at most once, sizes >= 1 (e.g. "data:2,fsdp:4")')
    sizes[name] = int(size)
  given = int(np.prod(list(sizes.values()))) if sizes else 1
  if device_count is None:
    return {a: sizes.get(a, 0) for a in MESH_AXES}
  if device_count % given:
    raise ValueError(f'config.train.mesh={spec!r} needs a multiple of {given} devices; this '
                     f'run has {device_count}')
  missing = [a for a in MESH_AXES if a not in sizes]
  if not missing and given != device_count:
    raise ValueError(f'config.train.mesh={spec!r} has {given} devices; this run has '
                     f'{device_count}')
  for i, a in enumerate(missing):
    sizes[a] = device_count // given if i == 0 else 1
  return {a: sizes[a] for a in MESH_AXES}


def make_mesh(devices: list[Any] | None = None, mesh: str = '') -> Mesh:
  """('data', 'fsdp') mesh over all devices of all processes (`mesh`: config.train.mesh).

  Devices in jax.devices() order (process-major), so each process's devices hold a
  contiguous slice of the batch, and an fsdp group spans neighbouring devices.
  """
  devices = jax.devices() if devices is None else devices
  sizes = parse_mesh(mesh, len(devices))
  return Mesh(np.asarray(devices).reshape(sizes[AXIS], sizes[FSDP_AXIS]), MESH_AXES)


def fsdp_spec(shape: tuple[int, ...], fsdp_size: int, min_size: int) -> P:
  """The PartitionSpec of one state array: its largest dimension that `fsdp_size` divides
  (the first such, on ties) split over 'fsdp' when the array has at least `min_size`
  elements; else replicated."""
  if fsdp_size == 1 or int(np.prod(shape, dtype=np.int64)) < min_size:
    return P()
  for i in sorted(range(len(shape)), key=lambda i: -shape[i]):
    if shape[i] % fsdp_size == 0:
      return P(*([None] * i + [FSDP_AXIS]))
  return P()


def host_copy(tree: Any) -> Any:
  """NumPy copy of a tree of (replicated) arrays, using only this process's local shard."""
  def one(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return np.asarray(x.addressable_data(0))
    return np.asarray(x)
  return jax.tree.map(one, tree)


class JitParallel:
  """`jax.jit` over a ('data', 'fsdp') mesh: the batch sharded over both axes, the state
  replicated or, with an fsdp axis, sharded by `fsdp_spec`."""
  name = 'jit'
  axis_name = None  # The model needs no collective axis: XLA partitions the global batch.

  def __init__(self, mesh: Mesh | None = None, fsdp_min_size: int = 1 << 14):
    self.mesh = mesh or make_mesh()
    self.fsdp_size = dict(self.mesh.shape).get(FSDP_AXIS, 1)
    self.fsdp_min_size = fsdp_min_size
    self.replicated = NamedSharding(self.mesh, P())
    self.batch_sharding = NamedSharding(self.mesh, P(tuple(self.mesh.axis_names)))

  def state_sharding(self, tree: Any) -> Any:
    """The sharding of each array of a state-like tree (arrays or ShapeDtypeStructs): the
    layout training and checkpoints use."""
    return jax.tree.map(lambda x: NamedSharding(
        self.mesh, fsdp_spec(tuple(x.shape), self.fsdp_size, self.fsdp_min_size)), tree)

  def put_state(self, state: Any) -> Any:
    """Global arrays in the state layout (input: host arrays equal on all processes, or
    global arrays in any layout on this mesh)."""
    def one(x, sharding):
      if isinstance(x, jax.Array) and x.sharding == sharding:
        return x
      if sharding == self.replicated:
        return jax.make_array_from_process_local_data(self.replicated, host_copy(x))
      if isinstance(x, jax.Array) and not x.is_fully_addressable:  # another global layout
        return jax.jit(lambda y: y, out_shardings=sharding)(x)
      x = np.asarray(x)
      return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])
    return jax.tree.map(one, state, self.state_sharding(state))

  def global_state(self, device_state: Any) -> Any:
    return device_state

  def put_batch(self, local_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """Assembles the global batch from this process's slice (leading dim sharded)."""
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(self.batch_sharding, np.asarray(x)),
        local_batch)

  def train_step(self, fn: Callable[[Any, Any], tuple[Any, Any]], state: Any) -> Callable:
    """fn(state, batch) -> (state, metrics); the state (like `state`) donated and kept in
    its layout, metrics replicated."""
    sharding = self.state_sharding(state)
    return jax.jit(fn, in_shardings=(sharding, self.batch_sharding),
                   out_shardings=(sharding, self.replicated), donate_argnums=(0,))

  def eval_step(self, fn: Callable[[Any, Any, Any], Any]) -> Callable:
    """fn(state, batch, accumulator) -> accumulator; the state in the layout it comes in,
    the accumulator donated and replicated."""
    return jax.jit(fn, in_shardings=(None, self.batch_sharding, self.replicated),
                   out_shardings=self.replicated, donate_argnums=(2,))

  def put_accumulator(self, tree: Any) -> Any:
    return self.put_state(tree)

  def fetch(self, tree: Any) -> Any:
    """Host copy of replicated outputs (metrics, accumulators)."""
    return host_copy(tree)


class PmapParallel:
  """`jax.pmap` over the local devices; gradients averaged with `lax.pmean` over 'data'."""
  name = 'pmap'
  axis_name = AXIS

  def __init__(self, mesh: Mesh | None = None):
    self.mesh = mesh or make_mesh()
    self.replicated = NamedSharding(self.mesh, P())
    self.local_devices = jax.local_devices()

  def put_state(self, state: Any) -> Any:
    """Stacks one copy per local device (leading axis), as pmap expects."""
    return flax.jax_utils.replicate(host_copy(state), devices=self.local_devices)

  def global_state(self, device_state: Any) -> Any:
    """First device's copy, as replicated global arrays on the mesh (checkpoint layout)."""
    local = host_copy(jax.tree.map(lambda x: x.addressable_shards[0].data[0], device_state))
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(self.replicated, x), local)

  def put_batch(self, local_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    n = len(self.local_devices)

    def split(x):
      x = np.asarray(x)
      if x.shape[0] % n:
        raise ValueError(f'per-process batch of {x.shape[0]} does not split over {n} local '
                         'devices; make config.data.global_batch_size a multiple of '
                         f'{jax.device_count()} (the device count)')
      return x.reshape((n, x.shape[0] // n) + x.shape[1:])
    return jax.tree.map(split, local_batch)

  def state_sharding(self, tree: Any) -> Any:
    """The checkpoint layout: replicated global arrays."""
    return jax.tree.map(lambda _: self.replicated, tree)

  def train_step(self, fn: Callable, state: Any = None) -> Callable:
    del state  # pmap replicates the state on every device
    # No `devices=`: the default spans every process's devices (a local list would not).
    return jax.pmap(fn, axis_name=AXIS, donate_argnums=(0,))

  def eval_step(self, fn: Callable) -> Callable:
    return jax.pmap(fn, axis_name=AXIS, donate_argnums=(2,))

  def put_accumulator(self, tree: Any) -> Any:
    return self.put_state(tree)

  def fetch(self, tree: Any) -> Any:
    """Host copy of the first device's value of replicated (psum/pmean-ed) outputs."""
    return jax.tree.map(lambda x: np.asarray(x.addressable_shards[0].data[0]), tree)


def make_parallel(mode: str, mesh: Mesh | None = None, fsdp_min_size: int = 1 << 14
                  ) -> JitParallel | PmapParallel:
  """`config.train.parallel` (and the mesh of `config.train.mesh`) -> strategy."""
  if mode not in PARALLEL_MODES:
    raise ValueError(f'config.train.parallel={mode!r}; valid choices: {PARALLEL_MODES}')
  if mode == 'pmap' and mesh is not None and dict(mesh.shape).get(FSDP_AXIS, 1) > 1:
    raise ValueError("config.train.mesh with an fsdp axis needs config.train.parallel='jit' "
                     '(pmap replicates the state on every device)')
  strategy = JitParallel(mesh, fsdp_min_size) if mode == 'jit' else PmapParallel(mesh)
  logging.info('data parallel: %s over %d devices (%d processes, %d local devices; mesh %s)',
               mode, jax.device_count(), jax.process_count(), jax.local_device_count(),
               dict(strategy.mesh.shape))
  return strategy


def pmean_if(tree: Any, axis_name: str | None) -> Any:
  """`lax.pmean` under pmap, identity under jit (where XLA already reduces globally)."""
  return tree if axis_name is None else jax.lax.pmean(tree, axis_name)


def psum_if(tree: Any, axis_name: str | None) -> Any:
  return tree if axis_name is None else jax.lax.psum(tree, axis_name)


def device_index(axis_name: str | None) -> jax.Array:
  """Index of this device along the pmap axis (0 under jit)."""
  return jnp.int32(0) if axis_name is None else jax.lax.axis_index(axis_name)
