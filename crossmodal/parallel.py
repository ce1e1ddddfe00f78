"""Data parallelism over every device of every host: `jax.jit` + mesh (default) or `pmap`.

Both strategies expose the same small interface so the training loop is written once:
`put_state` / `put_batch` move host data onto devices, `train_step` / `eval_step` compile a
step function, and `global_state` returns the state as replicated global arrays on the mesh,
the one layout checkpoints use whatever strategy trained it.

- `JitParallel` (default): one `Mesh` over `jax.devices()` with axis 'data'; the batch is
  sharded on 'data' and parameters are replicated (`NamedSharding`). XLA inserts the gradient
  all-reduce, and BatchNorm statistics are computed over the global batch.
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


def make_mesh(devices: list[Any] | None = None) -> Mesh:
  """1-D mesh named 'data' over all devices of all processes."""
  devices = jax.devices() if devices is None else devices
  return Mesh(np.asarray(devices), (AXIS,))


def host_copy(tree: Any) -> Any:
  """NumPy copy of a tree of (replicated) arrays, using only this process's local shard."""
  def one(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return np.asarray(x.addressable_data(0))
    return np.asarray(x)
  return jax.tree.map(one, tree)


class JitParallel:
  """`jax.jit` over a mesh: batch sharded on 'data', state replicated."""
  name = 'jit'
  axis_name = None  # The model needs no collective axis: XLA partitions the global batch.

  def __init__(self, mesh: Mesh | None = None):
    self.mesh = mesh or make_mesh()
    self.replicated = NamedSharding(self.mesh, P())
    self.batch_sharding = NamedSharding(self.mesh, P(AXIS))

  def put_state(self, state: Any) -> Any:
    """Replicated global arrays (input: host arrays equal on all processes, or any arrays)."""
    def one(x):
      if isinstance(x, jax.Array) and x.sharding == self.replicated:
        return x
      return jax.make_array_from_process_local_data(self.replicated, host_copy(x))
    return jax.tree.map(one, state)

  def global_state(self, device_state: Any) -> Any:
    return device_state

  def put_batch(self, local_batch: dict[str, np.ndarray]) -> dict[str, jax.Array]:
    """Assembles the global batch from this process's slice (leading dim sharded)."""
    return jax.tree.map(
        lambda x: jax.make_array_from_process_local_data(self.batch_sharding, np.asarray(x)),
        local_batch)

  def train_step(self, fn: Callable[[Any, Any], tuple[Any, Any]]) -> Callable:
    """fn(state, batch) -> (state, metrics); state donated, metrics replicated."""
    return jax.jit(fn, in_shardings=(self.replicated, self.batch_sharding),
                   out_shardings=(self.replicated, self.replicated), donate_argnums=(0,))

  def eval_step(self, fn: Callable[[Any, Any, Any], Any]) -> Callable:
    """fn(state, batch, accumulator) -> accumulator; accumulator donated and replicated."""
    return jax.jit(fn, in_shardings=(self.replicated, self.batch_sharding, self.replicated),
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

  def train_step(self, fn: Callable) -> Callable:
    # No `devices=`: the default spans every process's devices (a local list would not).
    return jax.pmap(fn, axis_name=AXIS, donate_argnums=(0,))

  def eval_step(self, fn: Callable) -> Callable:
    return jax.pmap(fn, axis_name=AXIS, donate_argnums=(2,))

  def put_accumulator(self, tree: Any) -> Any:
    return self.put_state(tree)

  def fetch(self, tree: Any) -> Any:
    """Host copy of the first device's value of replicated (psum/pmean-ed) outputs."""
    return jax.tree.map(lambda x: np.asarray(x.addressable_shards[0].data[0]), tree)


def make_parallel(mode: str, mesh: Mesh | None = None) -> JitParallel | PmapParallel:
  """`config.train.parallel` -> strategy."""
  if mode not in PARALLEL_MODES:
    raise ValueError(f'config.train.parallel={mode!r}; valid choices: {PARALLEL_MODES}')
  strategy = JitParallel(mesh) if mode == 'jit' else PmapParallel(mesh)
  logging.info('data parallel: %s over %d devices (%d processes, %d local devices)',
               mode, jax.device_count(), jax.process_count(), jax.local_device_count())
  return strategy


def pmean_if(tree: Any, axis_name: str | None) -> Any:
  """`lax.pmean` under pmap, identity under jit (where XLA already reduces globally)."""
  return tree if axis_name is None else jax.lax.pmean(tree, axis_name)


def psum_if(tree: Any, axis_name: str | None) -> Any:
  return tree if axis_name is None else jax.lax.psum(tree, axis_name)


def device_index(axis_name: str | None) -> jax.Array:
  """Index of this device along the pmap axis (0 under jit)."""
  return jnp.int32(0) if axis_name is None else jax.lax.axis_index(axis_name)
