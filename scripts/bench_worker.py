r"""One benchmark worker: a single framework (or variant) in its own process, pinned to cores.

scripts/benchmark.py starts several of these and alternates timed rounds between them, so that
each framework runs alone on the same cores, in its own process, and the machine's drift falls
on both sides of every per-round ratio. Run by hand:

  python scripts/bench_worker.py '{"kind": "train", "framework": "torch", "variant": "eager",
      "fusion": "concat", "batch_size": 40, "cores": [0, 1]}'

then write one JSON command per line to stdin ({"steps": 20} for train, {"feature": "log_mel",
"passes": 1} for features); each answer is one line starting with REPLY. The first reply
says the worker is ready (after warm-up and compilation) or why it failed.

Affinity and the thread-count environment are set before numpy, torch or jax is imported (the
thread pools size themselves from them). Nothing else is changed: both frameworks use glibc's
malloc unless LD_PRELOAD says otherwise, which the settings record.
"""
from __future__ import annotations

import json
import os
import sys
import time

REPLY = 'REPLY '
THREAD_ENV = ('OMP_NUM_THREADS', 'MKL_NUM_THREADS', 'OPENBLAS_NUM_THREADS')
RECORDED_ENV = THREAD_ENV + ('LD_PRELOAD', 'MALLOC_ARENA_MAX', 'XLA_FLAGS', 'KMP_AFFINITY',
                             'OMP_WAIT_POLICY')


def pin(cores: list[int]) -> None:
  """This process (and every thread it starts) on `cores`, one compute thread per core."""
  os.sched_setaffinity(0, cores)
  for name in THREAD_ENV:
    os.environ[name] = str(len(cores))


def reply(message: dict) -> None:
  print(REPLY + json.dumps(message), flush=True)


def commands():
  for line in sys.stdin:
    if line.strip():
      yield json.loads(line)


def base_settings(spec: dict) -> dict:
  return {'cores': sorted(os.sched_getaffinity(0)), 'pid': os.getpid(),
          'env': {k: os.environ.get(k) for k in RECORDED_ENV if os.environ.get(k) is not None},
          'allocator': ('LD_PRELOAD=' + os.environ['LD_PRELOAD']
                        if os.environ.get('LD_PRELOAD') else 'glibc malloc')}


# ----------------------------------------------------------------------------- training


def train_jax(spec: dict, batches: list) -> tuple:
  import jax  # pylint: disable=import-outside-toplevel
  import benchmark  # pylint: disable=import-outside-toplevel
  trainer = benchmark.JaxTrainer(benchmark.sgd_config(spec['fusion']), batches[0],
                                 variables=load_variables(spec.get('init')))
  data = [jax.device_put(b) for b in batches]
  device = jax.devices()[0]
  settings = {'framework': 'jax', 'jax_version': jax.__version__,
              'backend': jax.default_backend(), 'device': device.device_kind,
              'optimizer': 'optax.sgd(momentum=0.9)'}
  return trainer.step, data, jax.block_until_ready, settings


def train_torch(spec: dict, batches: list) -> tuple:
  import torch  # pylint: disable=import-outside-toplevel
  import benchmark  # pylint: disable=import-outside-toplevel
  torch_reference = benchmark._torch_reference()  # pylint: disable=protected-access
  torch.set_num_threads(len(os.sched_getaffinity(0)))
  trainer = torch_reference.Trainer(spec['fusion'], spec['variant'],
                                    variables=load_variables(spec.get('init')))
  data = [trainer.batch(b) for b in batches]
  settings = {'framework': 'torch', **trainer.settings,
              'backend': 'gpu' if trainer.device.type == 'cuda' else trainer.device.type}
  if trainer.device.type == 'cuda':
    settings['device_name'] = torch.cuda.get_device_name(trainer.device)
  return (lambda d: trainer.step(*d)), data, (lambda loss: loss.item()), settings


def load_variables(path: str | None):
  """{'params', 'batch_stats'} from the driver's .npz ('/'-joined paths), or None."""
  if not path:
    return None
  import numpy as np  # pylint: disable=import-outside-toplevel
  from flax import traverse_util  # pylint: disable=import-outside-toplevel
  with np.load(path) as f:
    return traverse_util.unflatten_dict({k: f[k] for k in f.files}, sep='/')


def run_train(spec: dict) -> None:
  """Warm-up (compilation), then rounds of {"steps": n}: examples/s and the losses."""
  import benchmark  # pylint: disable=import-outside-toplevel
  batches = benchmark.random_batches(spec['batch_size'], spec.get('num_batches', 4),
                                     seed=spec.get('seed', 0))
  build = train_jax if spec['framework'] == 'jax' else train_torch
  start = time.perf_counter()
  step, data, wait, settings = build(spec, batches)
  setup = time.perf_counter() - start
  index = 0  # both frameworks cycle through the same batches in the same order

  def run(steps: int) -> list:
    nonlocal index
    losses = []
    for _ in range(steps):
      losses.append(step(data[index % len(data)]))
      index += 1
    wait(losses[-1])
    return losses

  start = time.perf_counter()
  run(1)
  first_step = time.perf_counter() - start
  run(spec.get('warmup', 2))
  reply({'ready': True, 'settings': {**base_settings(spec), **settings},
         'setup_seconds': setup, 'first_step_seconds': first_step})
  for command in commands():
    start = time.perf_counter()
    losses = run(command['steps'])
    seconds = time.perf_counter() - start
    reply({'examples_per_sec': command['steps'] * spec['batch_size'] / seconds,
           'seconds': seconds, 'losses': [float(l) for l in losses]})


# ----------------------------------------------------------------------------- featurization


def run_features(spec: dict) -> None:
  """JAX (jitted) or librosa (batched float32) featurization of clips[start:stop] in calls of
  `batch` clips; rounds of {"feature", "passes"} report their start and end on the system-wide
  monotonic clock, so the driver can time processes that run side by side."""
  import numpy as np  # pylint: disable=import-outside-toplevel
  from crossmodal.data import features  # pylint: disable=import-outside-toplevel
  clips = np.load(spec['clips'])[spec['start']:spec['stop']]
  size = spec['batch']
  chunks = [clips[i:i + size] for i in range(0, len(clips), size)]
  cfg = features.features_config()
  if spec['framework'] == 'jax':
    import jax  # pylint: disable=import-outside-toplevel
    import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
    fns = {name: jax.jit(lambda x, fn=fn: fn(x, cfg))
           for name, fn in (('log_mel', features.log_mel), ('mfcc', features.mfcc))}
    chunks = [jnp.asarray(c) for c in chunks]
    run = lambda name: jax.block_until_ready([fns[name](c) for c in chunks])
    settings = {'framework': 'jax', 'backend': jax.default_backend()}
  else:
    import librosa  # pylint: disable=import-outside-toplevel
    fns = {'log_mel': features.librosa_log_mel_batched, 'mfcc': features.librosa_mfcc_batched}
    run = lambda name: [fns[name](c, cfg) for c in chunks]
    settings = {'framework': 'librosa', 'librosa_version': librosa.__version__}
  for name in fns:  # warm-up: compilation, librosa's caches
    run(name)
  reply({'ready': True, 'settings': {**base_settings(spec), **settings}})
  for command in commands():
    start = time.monotonic()
    for _ in range(command.get('passes', 1)):
      run(command['feature'])
    reply({'start': start, 'end': time.monotonic(),
           'clips': len(clips) * command.get('passes', 1)})


def main() -> None:
  spec = json.loads(sys.argv[1])
  pin(spec['cores'])
  try:
    {'train': run_train, 'features': run_features}[spec['kind']](spec)
  except Exception as e:  # pylint: disable=broad-except
    reply({'error': f'{type(e).__name__}: {e}'.strip()[:2000]})
    raise


if __name__ == '__main__':
  main()
