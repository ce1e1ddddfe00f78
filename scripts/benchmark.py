r"""Benchmarks: training speed vs PyTorch, hardware utilisation, featurization, input pipeline,
start-up and memory, and how the cross-attention block scales.

  python scripts/benchmark.py --out=perf.md   # the full run
  python scripts/benchmark.py --quick         # smaller sizes
  python scripts/benchmark.py --tiny          # smallest sizes, eager PyTorch only (the tests)

Durations of this harness are unmeasured except --tiny (2.2 min on a 2-core CPU beside a job);
--quick and the full run take longer (docs/performance.md's 28 min is from the earlier
in-process version). Run on a quiet machine: on a busy one PyTorch's OpenMP threads slow down
far more than JAX's (a 2-thread eager step took 60x longer than a 1-thread one).

The comparisons with another framework (PyTorch training, librosa featurization) run each
side in its own process (scripts/bench_worker.py), pinned to the same cores (`--cores`, one
compute thread per core), and alternate timed rounds between them over several fresh
launches; they report the median of the per-round ratios and its range, so that the machine's
drift lands on both sides of each ratio. PyTorch is tried in every variant of
torch_reference.VARIANTS (eager / torch.compile, NCHW / channels_last, fused SGD), each first
checked in this process for the JAX model's loss trajectory (same weights and batches, dropout
off), and runs on CUDA when there is one; a ratio between different kinds of device is refused.
Other sections time in this process: warm-up (compilation) excluded, the median of
`Sizes.repeats` timed blocks. Sections that cannot run here (no PyTorch installed, no FSDD
sources, AV-MNIST not prepared) say so in the table instead of a number.
"""
from __future__ import annotations

import argparse
import copy
import dataclasses
import datetime
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from crossmodal import config_utils
from crossmodal import optim
from crossmodal import train
from crossmodal.data import features

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
AVMNIST = os.path.join(REPO, 'experiments', 'avmnist.py')
BASE = os.path.join(REPO, 'experiments', 'base.py')


@dataclasses.dataclass
class Sizes:
  """What a run measures; --quick and the test shrink these."""
  batch_sizes: tuple[int, ...] = (40, 256)
  steps: int = 20  # timed steps per repeat / per round
  repeats: int = 5
  launches: int = 3  # fresh worker processes per comparison (vs PyTorch, featurization)
  rounds: int = 3  # alternating timed rounds per launch
  fusions: tuple[str, ...] = ('concat', 'crossattn')  # compared with PyTorch
  torch_variants: tuple[str, ...] = ('eager', 'eager+channels_last', 'compile',
                                     'compile+channels_last')
  parity_batch: int = 8  # loss-trajectory check of every PyTorch variant against JAX
  parity_steps: int = 5
  clips: int = 1000  # featurization
  feature_passes: int = 2  # passes over the clips per timed round
  matmul: int = 2048
  pipeline_steps: int = 40
  scaling_tokens: tuple[int, ...] = (16, 64, 256)
  scaling_batches: tuple[int, ...] = (32, 128)
  utilisation_fusions: tuple[str, ...] = ('concat', 'crossattn')  # LeNet models measured
  transformer: str | None = 'small'  # experiments/base.py size for utilisation (None: skip)


QUICK = Sizes(batch_sizes=(40,), steps=8, repeats=3, rounds=2, clips=200, feature_passes=1,
              matmul=1024, pipeline_steps=16, scaling_tokens=(16, 64), scaling_batches=(32,))
# The smallest run (tests/test_benchmark.py): crossattn vs eager PyTorch; utilisation of concat
# alone, the model that compiles fastest, and no transformer (tests/test_experiments.py trains
# base.py size=tiny; the section treats it as any other config).
TINY = Sizes(batch_sizes=(8,), steps=2, repeats=2, launches=1, rounds=2, fusions=('crossattn',),
             torch_variants=('eager', 'eager+channels_last'), parity_steps=3, clips=8,
             feature_passes=1, matmul=128, pipeline_steps=4, scaling_tokens=(8,),
             scaling_batches=(4,), utilisation_fusions=('concat',), transformer=None)


def timed(fn: Callable[[], Any], steps: int, repeats: int) -> list[float]:
  """Seconds per call of `fn` (which must block on its result), per repeat, after one warm-up."""
  fn()
  out = []
  for _ in range(repeats):
    start = time.perf_counter()
    for _ in range(steps):
      fn()
    out.append((time.perf_counter() - start) / steps)
  return out


def random_batches(batch_size: int, count: int, seed: int = 0) -> list[dict[str, np.ndarray]]:
  """AV-MNIST-shaped batches (uint8 28x28 images, 1 s of 8 kHz audio), the same for both
  frameworks. Throughput does not depend on the values."""
  rng = np.random.default_rng(seed)
  return [{'image': rng.integers(0, 256, (batch_size, 28, 28, 1), dtype=np.uint8),
           'audio': rng.uniform(-0.5, 0.5, (batch_size, 8000)).astype(np.float32),
           'label': rng.integers(0, 10, (batch_size,), dtype=np.int32)} for _ in range(count)]


# ----------------------------------------------------------------------------- JAX training


def sgd_config(fusion: str = 'concat', dropout: float | None = None):
  """experiments/avmnist.py's model with MultiBench's optimizer (SGD, momentum 0.9, constant
  lr 0.01, no weight decay); `dropout` overrides the fusion's (crossattn: 0.1; concat has none).
  """
  config = config_utils.load_config_file(f'{AVMNIST}:fusion={fusion}')
  config.optim = optim.optim_config(name='sgd', lr=0.01, momentum=0.9,
                                    schedule='constant', weight_decay=0.0)
  if dropout is not None and 'dropout' in config.model.fusion:
    config.model.fusion.dropout = dropout
  return config


class JaxTrainer:
  """crossmodal's training step (train.make_train_step on one device, donated state) that
  returns only the loss: the step's other metrics (accuracy, grad norm) are then dead code
  XLA removes, and the PyTorch step computes no metric either.

  variables: {'params', 'batch_stats'} to start from (else the init of PRNGKey(seed)).
  """

  def __init__(self, config, example_batch: dict[str, np.ndarray], variables=None,
               seed: int = 0, num_classes: int = 10):
    model = train.build_model(config, num_classes, axis_name=None)
    tx = optim.make_optimizer(config.optim, 1000)
    state = jax.jit(train.make_init_fn(model, tx, example_batch))(jax.random.PRNGKey(seed))
    if variables is not None:
      state = state.replace(params=jax.tree.map(jnp.asarray, variables['params']),
                            batch_stats=jax.tree.map(jnp.asarray, variables['batch_stats']))
    self.state = state
    full_step = train.make_train_step(model, tx, None, objectives=config.get('objectives'))

    def step(state, batch):
      state, metrics = full_step(state, batch)
      return state, metrics['loss']
    self.step_fn = jax.jit(step, donate_argnums=(0,))

  def variables(self) -> dict[str, Any]:
    return {'params': self.state.params, 'batch_stats': self.state.batch_stats}

  def step(self, device_batch) -> jax.Array:
    """One step, dispatched asynchronously (as the training loop on one device)."""
    self.state, loss = self.step_fn(self.state, device_batch)
    return loss

  def compile(self, device_batch) -> float:
    """Compiles the step for this batch (later steps reuse it) and returns its FLOPs from
    XLA's cost analysis."""
    self.step_fn = self.step_fn.lower(self.state, device_batch).compile()
    return _flops(self.step_fn)


def _flops(compiled) -> float:
  cost = compiled.cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get('flops', float('nan')))


def compiled_flops(fn, *args) -> float:
  return _flops(fn.lower(*args).compile())


def jax_loss_trajectory(fusion: str, batches: Sequence[dict[str, np.ndarray]], steps: int
                        ) -> tuple[list[float], dict[str, Any]]:
  """Losses of `steps` SGD steps without dropout cycling through `batches`, and the initial
  variables (numpy) they started from."""
  trainer = JaxTrainer(sgd_config(fusion, dropout=0.0), batches[0])
  variables = jax.tree.map(np.asarray, trainer.variables())
  device_batches = [jax.device_put(b) for b in batches]
  losses = [trainer.step(device_batches[i % len(batches)]) for i in range(steps)]
  return [float(l) for l in losses], variables


# ----------------------------------------------------------------------------- workers

WORKER = os.path.join(REPO, 'scripts', 'bench_worker.py')
REPLY = 'REPLY '  # bench_worker.REPLY


class Worker:
  """A scripts/bench_worker.py process: one framework pinned to `spec['cores']`; `ask` sends
  one command and returns its JSON reply. `ready` is the first reply (after warm-up), with
  'error' if the worker could not start."""

  def __init__(self, spec: dict[str, Any]):
    self.stderr = tempfile.TemporaryFile('w+')
    path = os.pathsep.join(p for p in (REPO, os.environ.get('PYTHONPATH')) if p)
    self.process = subprocess.Popen(
        [sys.executable, WORKER, json.dumps(spec)], stdin=subprocess.PIPE,
        stdout=subprocess.PIPE, stderr=self.stderr, text=True, cwd=REPO,
        env={**os.environ, 'PYTHONPATH': path})
    self._ready = None

  @property
  def ready(self) -> dict[str, Any]:
    """The first reply: waits for the worker's warm-up (start several, then read this)."""
    if self._ready is None:
      self._ready = self.read()
    return self._ready

  def read(self) -> dict[str, Any]:
    for line in self.process.stdout:
      if line.startswith(REPLY):
        return json.loads(line[len(REPLY):])
    self.process.wait()
    self.stderr.seek(0)
    tail = self.stderr.read().strip().splitlines()[-1:]
    return {'error': f'worker exited with {self.process.returncode}: {tail}'}

  def send(self, command: dict[str, Any]) -> None:
    self.process.stdin.write(json.dumps(command) + '\n')
    self.process.stdin.flush()

  def ask(self, command: dict[str, Any]) -> dict[str, Any]:
    self.send(command)
    return self.read()

  def close(self) -> None:
    if self.process.poll() is None:
      self.process.stdin.close()
      try:
        self.process.wait(timeout=60)
      except subprocess.TimeoutExpired:
        self.process.kill()
        self.process.wait()
    self.stderr.close()


def _spread(values: Sequence[float]) -> str:
  return f'{np.median(values):.2f}x ({min(values):.2f}-{max(values):.2f})'


def _device_kind(backend: str) -> str:
  return {'cuda': 'gpu', 'rocm': 'gpu'}.get(backend, backend)


# ----------------------------------------------------------------------------- vs PyTorch

# Largest |JAX loss - PyTorch loss| over the parity steps (float32, loss ~2.3, dropout off,
# same weights and batches). Agreeing implementations differ by 2e-7 (eager NCHW) to 8e-6
# (channels_last: oneDNN's other conv kernels) after 5 SGD steps at batch 8; an error that
# matters is far above 3e-5: lr off by 1% moves the second loss by ~1e-3, a lost gradient
# path by ~1e-3 (tests/test_benchmark.py checks both ways).
PARITY_TOLERANCE = 3e-5


def loss_difference(torch_ref, fusion: str, variant: str, batches, jax_losses, variables,
                    lr: float = 0.01) -> float | str:
  """Largest |PyTorch loss - JAX loss| over the trajectory of `jax_losses` (dropout off,
  weights copied from `variables`, the same batches in the same order), or the error that
  stopped PyTorch (torch.compile may fail). `lr` != 0.01 is a check that can fail."""
  try:
    trainer = torch_ref.Trainer(fusion, variant, variables=variables,
                                model_config=sgd_config(fusion, dropout=0.0).model, lr=lr)
    losses = torch_ref.loss_trajectory(trainer, batches, len(jax_losses))
  except Exception as e:  # pylint: disable=broad-except
    return f'{type(e).__name__}: {e}'.splitlines()[0][:300]
  return float(np.max(np.abs(np.array(losses) - jax_losses)))


def loss_parity(torch_ref, fusion: str, variants: Sequence[str], batch_size: int,
                steps: int) -> dict[str, float | str]:
  """loss_difference of every variant on `steps` steps over two seeded batches."""
  batches = random_batches(batch_size, 2, seed=1)
  jax_losses, variables = jax_loss_trajectory(fusion, batches, steps)
  return {v: loss_difference(torch_ref, fusion, v, batches, jax_losses, variables)
          for v in variants}


def interleaved_training(fusion: str, batch_size: int, variants: Sequence[str], sizes: Sizes,
                         cores: Sequence[int], init: str) -> dict[str, Any]:
  """Each framework in its own pinned process; per launch every variant's worker is started
  fresh, then rounds alternate JAX, a PyTorch variant, JAX, the next variant, ... (variant
  order rotating), each ratio taken against the JAX round just before it."""
  spec = {'kind': 'train', 'fusion': fusion, 'batch_size': batch_size, 'cores': list(cores),
          'init': init}
  out = {'jax': {'rates': [], 'ready': []},
         **{v: {'rates': [], 'ratios': [], 'ready': [], 'error': None} for v in variants}}
  for launch in range(sizes.launches):
    workers = {'jax': Worker({**spec, 'framework': 'jax'})}
    if 'error' in workers['jax'].ready:
      workers['jax'].close()
      return {'error': workers['jax'].ready['error']}
    out['jax']['ready'].append(workers['jax'].ready)
    for v in variants:
      worker = Worker({**spec, 'framework': 'torch', 'variant': v})
      if 'error' in worker.ready:
        out[v]['error'] = worker.ready['error']
        worker.close()
        continue
      workers[v] = worker
      out[v]['ready'].append(worker.ready)
    alive = [v for v in variants if v in workers]
    for r in range(sizes.rounds):
      shift = (launch * sizes.rounds + r) % max(1, len(alive))
      for v in alive[shift:] + alive[:shift]:
        ours = workers['jax'].ask({'steps': sizes.steps})['examples_per_sec']
        theirs = workers[v].ask({'steps': sizes.steps})['examples_per_sec']
        out['jax']['rates'].append(ours)
        out[v]['rates'].append(theirs)
        out[v]['ratios'].append(ours / theirs)
    for worker in workers.values():
      worker.close()
  return out


def save_variables(variables: dict[str, Any], path: str) -> None:
  from flax import traverse_util  # pylint: disable=g-import-not-at-top
  flat = traverse_util.flatten_dict(jax.tree.map(np.asarray, variables), sep='/')
  np.savez(path, **flat)


def section_vs_torch(sizes: Sizes, cores: Sequence[int]) -> list[str]:
  torch_ref = _torch_reference()
  if torch_ref is None:
    return ["PyTorch not installed (pip install -e '.[bench]'): not measured."]
  rows = [f'Loss parity: each PyTorch variant from the JAX weights, dropout off, '
          f'{sizes.parity_steps} SGD steps at batch {sizes.parity_batch}; tolerance '
          f'{PARITY_TOLERANCE:g} (float32).', '',
          '| model | PyTorch variant | max abs. loss difference | parity |', '|---|---|---|---|']
  passed = {}
  for fusion in sizes.fusions:
    diffs = loss_parity(torch_ref, fusion, sizes.torch_variants, sizes.parity_batch,
                        sizes.parity_steps)
    for variant, diff in diffs.items():
      ok = isinstance(diff, float) and diff <= PARITY_TOLERANCE
      passed[fusion, variant] = ok
      shown = f'{diff:.2g}' if isinstance(diff, float) else f'failed: {diff}'
      rows.append(f'| {fusion} | {variant} | {shown} | {"ok" if ok else "DIFFERS"} |')
  rows += ['', '| model | batch | PyTorch variant | first step s (compile) | JAX ex/s | '
           'PyTorch ex/s | JAX / PyTorch, median of rounds (range) |', '|---|---|---|---|---|---|---|']
  summary = ['| model | batch | JAX ex/s | fastest PyTorch ex/s (variant) | JAX / PyTorch, '
             'median of rounds (range) | rounds |', '|---|---|---|---|---|---|']
  settings = []
  with tempfile.TemporaryDirectory() as tmp:
    for fusion in sizes.fusions:
      for b in sizes.batch_sizes:
        init = os.path.join(tmp, f'{fusion}_{b}.npz')
        save_variables(JaxTrainer(sgd_config(fusion), random_batches(b, 1)[0]).variables(), init)
        result = interleaved_training(fusion, b, sizes.torch_variants, sizes, cores, init)
        if 'error' in result:
          rows.append(f'| {fusion} | {b} | - | JAX worker failed: {result["error"]} | | | |')
          continue
        jax_settings = result['jax']['ready'][0]['settings']
        jax_rate = float(np.median(result['jax']['rates']))
        timed_variants = [v for v in sizes.torch_variants if result[v]['rates']]
        for v in sizes.torch_variants:
          r = result[v]
          if not r['rates']:
            rows.append(f'| {fusion} | {b} | {v} | failed: {r["error"]} | | | |')
            continue
          torch_settings = r['ready'][0]['settings']
          first = '/'.join(f'{x["first_step_seconds"]:.0f}' for x in r['ready'])
          if _device_kind(torch_settings['backend']) != _device_kind(jax_settings['backend']):
            ratio = (f'not compared: JAX on {jax_settings["backend"]}, PyTorch on '
                     f'{torch_settings["backend"]}')
          else:
            ratio = _spread(r['ratios'])
          rows.append(f'| {fusion} | {b} | {v} | {first} | {jax_rate:.0f} | '
                      f'{np.median(r["rates"]):.0f} | {ratio} |')
          if not settings:
            settings = [f'JAX: {jax_settings["backend"]} ({jax_settings["device"]}), jax '
                        f'{jax_settings["jax_version"]}, {jax_settings["optimizer"]}; '
                        f'PyTorch: {torch_settings["device"]}, torch '
                        f'{torch_settings["torch_version"]}, {torch_settings["optimizer"]}, '
                        f'{torch_settings["threads"]} intra-op / '
                        f'{torch_settings["interop_threads"]} inter-op threads. Both pinned '
                        f'to cores {torch_settings["cores"]}, environment '
                        f'{torch_settings["env"]}, allocator {torch_settings["allocator"]}.']
        candidates = [v for v in timed_variants if passed.get((fusion, v))] or timed_variants
        if candidates:
          best = max(candidates, key=lambda v: np.median(result[v]['rates']))
          kinds = {_device_kind(jax_settings['backend']),
                   _device_kind(result[best]['ready'][0]['settings']['backend'])}
          ratio = _spread(result[best]['ratios']) if len(kinds) == 1 else 'not compared'
          flag = '' if passed.get((fusion, best)) else ', loss parity failed'
          summary.append(f'| {fusion} | {b} | {jax_rate:.0f} | '
                         f'{np.median(result[best]["rates"]):.0f} ({best}{flag}) | {ratio} | '
                         f'{len(result[best]["ratios"])} |')
  return summary + [''] + settings + [
      '', f'{sizes.launches} launches x {sizes.rounds} rounds of {sizes.steps} steps; every '
      'framework and variant in its own process, the same batches (one seed, 4 batches cycled '
      'in order) and the same start weights on both sides; loss only (no other metric); '
      'the JAX step dispatches asynchronously, as the training loop on one device.', '',
      *rows]


def _torch_reference():
  try:
    import torch  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    return None
  return config_utils.load_module(os.path.join(REPO, 'scripts', 'torch_reference.py'),
                                  'torch_reference')


def _cpu_threads() -> int:
  return len(os.sched_getaffinity(0)) if hasattr(os, 'sched_getaffinity') else os.cpu_count()


# ----------------------------------------------------------------------------- utilisation


def peak_matmul_flops(n: int, sizes: Sizes) -> float:
  """FLOP/s of a jitted float32 n x n matmul: the attainable peak of this device."""
  a = jnp.asarray(np.random.default_rng(0).normal(size=(n, n)), jnp.float32)
  f = jax.jit(lambda x: x @ x)
  seconds = timed(lambda: f(a).block_until_ready(), max(2, sizes.steps // 2), sizes.repeats)
  return 2 * n ** 3 / float(np.median(seconds))


def transformer_case(size: str):
  """(label, config, batch): experiments/base.py at `size` on one batch of its synthetic data."""
  from crossmodal.data import input_pipeline, synthetic  # pylint: disable=g-import-not-at-top
  config = config_utils.load_config_file(f'{BASE}:size={size}')
  source = synthetic.get_data_source('train', config.data.synthetic)
  examples = [input_pipeline.to_model_example(source[i])
              for i in range(config.data.global_batch_size)]
  batch = {k: np.stack([e[k] for e in examples]) for k in examples[0]}
  return f'transformers (base.py size={size})', config, batch


def without_dropout(config):
  """A copy of `config` with every model `dropout` rate set to 0 (counts the RNG's FLOPs), or
  None if it has no dropout."""
  config = copy.deepcopy(config)
  found = []

  def walk(node):
    for key, value in node.items():
      if key == 'dropout' and isinstance(value, float) and value > 0:
        node[key] = 0.0
        found.append(key)
      elif hasattr(value, 'items'):
        walk(value)
  walk(config.model)
  return config if found else None


def featurization_flops(config, batch: dict[str, np.ndarray]) -> float:
  """FLOPs of the audio featurizer on the batch (forward only: no gradient reaches the
  waveform), compiled alone; 0 without audio."""
  if 'audio' not in config.model.modalities:
    return 0.0
  from crossmodal.models import encoders  # pylint: disable=g-import-not-at-top
  enc = encoders.build_encoder('audio', config.model.encoders.audio, int(config.model.dim))
  fn = jax.jit(lambda a: encoders._spectrogram(enc, a))  # pylint: disable=protected-access
  return compiled_flops(fn, jnp.asarray(batch['audio']))


def encoder_flops(config, variables: dict[str, Any], batch: dict[str, np.ndarray]) -> float:
  """FLOPs of the encoders' forward + backward (to their parameters) as in the training step,
  featurization included: the gradient of a fixed linear function of their outputs."""
  model = train.build_model(config, 10, axis_name=None)

  def loss(params, batch):  # the batch an argument: as a constant XLA would fold its featurizer
    total = 0.0
    for m in model.modalities:
      name = f'{m}_encoder'
      out, _ = model.encoder(m).apply(
          {'params': params[name], 'batch_stats': variables['batch_stats'].get(name, {})},
          batch[m], train=True, mutable=['batch_stats'])
      total += sum(x.astype(jnp.float32).sum() for x in jax.tree.leaves(out)
                   if jnp.issubdtype(x.dtype, jnp.floating))
    return total
  params = {f'{m}_encoder': variables['params'][f'{m}_encoder'] for m in model.modalities}
  return compiled_flops(jax.jit(jax.grad(loss)), params,
                        {m: jnp.asarray(batch[m]) for m in model.modalities})


def section_utilisation(sizes: Sizes) -> list[str]:
  """Model FLOPs per second over a matmul peak measured in this process (before and after).

  Model FLOPs are XLA's count for the training step without dropout, minus the audio
  featurizer's; the featurizer and the dropout RNG (with its masks) are listed separately,
  not counted as model work. The step timed is the real one (dropout and featurization in)."""
  peaks = [peak_matmul_flops(sizes.matmul, sizes)]
  b = max(sizes.batch_sizes)
  cases = [(fusion, sgd_config(fusion), random_batches(b, 1)[0])
           for fusion in sizes.utilisation_fusions]
  if sizes.transformer is not None:
    cases.append(transformer_case(sizes.transformer))
  measured, split = [], []
  for i, (label, config, batch) in enumerate(cases):
    lenet = i < len(sizes.utilisation_fusions)
    trainer = JaxTrainer(config, batch)
    device_batch = jax.device_put(batch)
    step_flops = trainer.compile(device_batch)
    deterministic = without_dropout(config)
    no_dropout = (step_flops if deterministic is None
                  else JaxTrainer(deterministic, batch).compile(device_batch))
    featurize = featurization_flops(config, batch)
    model_flops = no_dropout - featurize
    if lenet:  # where the FLOPs go
      encoders = encoder_flops(config, trainer.variables(), batch) - featurize
      split.append(f'| {label} | {encoders / 1e9:.2f} ({100 * encoders / model_flops:.0f}%) | '
                   f'{(model_flops - encoders) / 1e9:.2f} '
                   f'({100 * (model_flops - encoders) / model_flops:.0f}%) |')
    steps = sizes.steps if lenet else max(2, sizes.steps // 4)  # a transformer step takes seconds

    def run(trainer=trainer, device_batch=device_batch):
      trainer.step(device_batch).block_until_ready()
    seconds = float(np.median(timed(run, steps, sizes.repeats)))
    measured.append((label, len(batch['label']), model_flops, featurize,
                     step_flops - no_dropout, seconds))
    del trainer
  peaks.append(peak_matmul_flops(sizes.matmul, sizes))
  peak = max(peaks)
  rows = [f'Peak: jitted float32 {sizes.matmul}x{sizes.matmul} matmul in this process, '
          f'{peaks[0] / 1e9:.1f} GFLOP/s before the models and {peaks[1] / 1e9:.1f} after; '
          f'the higher is used.', '',
          '| model | batch | model GFLOP per step | featurization GFLOP | dropout RNG + masks '
          'GFLOP | steps/s | model GFLOP/s | utilisation |', '|---|---|---|---|---|---|---|---|']
  for label, batch_size, model_flops, featurize, dropout, seconds in measured:
    achieved = model_flops / seconds
    rows.append(f'| {label} | {batch_size} | {model_flops / 1e9:.2f} | {featurize / 1e9:.2f} | '
                f'{dropout / 1e9:.2f} | {1 / seconds:.2f} | {achieved / 1e9:.1f} | '
                f'{100 * achieved / peak:.1f}% |')
  return rows + ['', 'XLA cost analysis of the compiled training step (SGD update included; '
                 'the featurizer compiled alone; dropout as the difference from the same step '
                 'with every dropout rate 0). Where the model FLOPs go:', '',
                 '| model | encoders (convolutions, BatchNorm, token projection) GFLOP | '
                 'fusion, head, loss and update GFLOP |', '|---|---|---|', *split]


# ----------------------------------------------------------------------------- featurization


def fsdd_clips(count: int) -> np.ndarray | None:
  """`count` real FSDD clips padded/cropped to 1 s, or None without the sources."""
  from crossmodal.data import sources  # pylint: disable=g-import-not-at-top
  try:
    root = sources.resolve_manual_dir()
  except sources.SourceError:
    return None
  if root is None:
    return None
  files = sorted((root / 'fsdd' / 'recordings').glob('*.wav'))[:count]
  clips = np.zeros((len(files), 8000), np.float32)
  for i, path in enumerate(files):
    samples = sources.read_wav(path).astype(np.float32) / 32768.0
    clips[i, :min(8000, len(samples))] = samples[:8000]
  return clips


FEATURE_BATCH = 64  # AV-MNIST's training batch: what the featurizer sees inside the train step


FEATURES = (('log-mel (dB)', 'log_mel', features.log_mel, features.librosa_log_mel,
             features.librosa_log_mel_batched),
            ('MFCC', 'mfcc', features.mfcc, features.librosa_mfcc, features.librosa_mfcc_batched))


def feature_deviations(clips: np.ndarray) -> list[str]:
  """Max |difference| from the per-clip float64 librosa reference, of the batched float32
  librosa path the timing uses and of the JAX featurizer."""
  cfg = features.features_config()
  rows = ['| featurizer | batched float32 librosa vs per-clip float64 librosa | JAX vs per-clip '
          'float64 librosa |', '|---|---|---|']
  for label, _, jax_fn, reference_fn, batched_fn in FEATURES:
    reference = reference_fn(clips, cfg)
    batched = np.abs(batched_fn(clips, cfg) - reference).max()
    ours = np.abs(np.asarray(jax.jit(lambda x, fn=jax_fn: fn(x, cfg))(clips)) - reference).max()
    rows.append(f'| {label} | {batched:.2g} | {ours:.2g} |')
  return rows


def section_featurization(sizes: Sizes, cores: Sequence[int]) -> list[str]:
  """JAX (jitted) against librosa at its best (one batched float32 call per batch of 64, the
  filterbank built once), each in its own pinned process: on one core (both on the same
  one), and on two (JAX with two threads; librosa as two processes, one per core, each on
  half the clips). Rounds alternate JAX and librosa; the ratio is per round."""
  clips = fsdd_clips(sizes.clips)
  if clips is None:
    return ['FSDD sources not found (docs/data.md): not measured.']
  layouts = {1: [list(cores[:1])]}
  if len(cores) > 1:
    layouts[2] = [[c] for c in cores[:2]]
  n, half = len(clips), (len(clips) + 1) // 2
  rates = {(f, k, who): [] for f in ('log_mel', 'mfcc') for k in layouts for who in 'jl'}
  ratios = {(f, k): [] for f in ('log_mel', 'mfcc') for k in layouts}
  with tempfile.TemporaryDirectory() as tmp:
    path = os.path.join(tmp, 'clips.npy')
    np.save(path, clips)
    spec = {'kind': 'features', 'clips': path, 'batch': min(FEATURE_BATCH, n)}
    for _ in range(sizes.launches):
      workers = {}
      for k, librosa_cores in layouts.items():
        jax_cores = sorted(c for group in librosa_cores for c in group)
        workers[k, 'j'] = [Worker({**spec, 'framework': 'jax', 'cores': jax_cores,
                                   'start': 0, 'stop': n})]
        parts = [(0, n)] if k == 1 else [(0, half), (half, n)]
        workers[k, 'l'] = [Worker({**spec, 'framework': 'librosa', 'cores': c,
                                   'start': a, 'stop': z})
                           for c, (a, z) in zip(librosa_cores, parts)]
      errors = [w.ready['error'] for group in workers.values() for w in group
                if 'error' in w.ready]
      if errors:
        for group in workers.values():
          for w in group:
            w.close()
        return [f'Featurization workers failed: {errors[0]}']
      for _ in range(sizes.rounds):
        for feature in ('log_mel', 'mfcc'):
          for k in layouts:
            for who in 'jl':
              group = workers[k, who]
              command = {'feature': feature, 'passes': sizes.feature_passes}
              for w in group:  # side by side: all started before any is read
                w.send(command)
              replies = [w.read() for w in group]
              seconds = max(r['end'] for r in replies) - min(r['start'] for r in replies)
              rates[feature, k, who].append(sum(r['clips'] for r in replies) / seconds)
            ratios[feature, k].append(rates[feature, k, 'j'][-1] / rates[feature, k, 'l'][-1])
      for group in workers.values():
        for w in group:
          w.close()
  rows = ['| featurizer | cores | JAX clips/s | librosa clips/s | JAX / librosa, median of '
          'rounds (range) |', '|---|---|---|---|---|']
  for label, feature, *_ in FEATURES:
    for k in layouts:
      how = ('1 (the same core)' if k == 1 else
             '2 (JAX: 2 threads; librosa: 2 processes, one per core, half the clips each)')
      rows.append(f'| {label} | {how} | {np.median(rates[feature, k, "j"]):.0f} | '
                  f'{np.median(rates[feature, k, "l"]):.0f} | {_spread(ratios[feature, k])} |')
  return rows + [
      '', f'{n} FSDD clips (1 s at 8 kHz) in calls of {spec["batch"]} (the training batch), '
      f'{sizes.feature_passes} pass(es) per round, {sizes.launches} launches x {sizes.rounds} '
      'rounds. librosa: `librosa.stft` on the float32 batch, the Slaney filterbank built once '
      '(`librosa.filters.mel`), `power_to_db` with the top_db floor per clip by hand; NumPy '
      'and BLAS threads = cores of the process.', '', *feature_deviations(clips)]


# ----------------------------------------------------------------------------- input pipeline


def section_pipeline(sizes: Sizes) -> list[str]:
  """Training examples/s fed by the real pipeline vs by the same batches already in memory.

  The three feeds are timed in interleaved rounds (memory, decoding, cached, memory, ...) and
  each pipeline is reported as the median over rounds of its rate / that round's in-memory
  rate: on a shared VM the machine's speed drifts by more than the difference being measured,
  and timing the feeds one after another would fold that drift into the ratio.
  """
  from crossmodal import parallel  # pylint: disable=g-import-not-at-top
  from crossmodal.data import datasets  # pylint: disable=g-import-not-at-top
  config = sgd_config()
  b = max(sizes.batch_sizes)
  config.data.global_batch_size = b
  try:
    run = train._Run(config)  # pylint: disable=protected-access
    source_name = f'AV-MNIST {config.data.builder_config}'
  except Exception as e:  # pylint: disable=broad-except
    return [f'Input pipeline: AV-MNIST unavailable ({type(e).__name__}: {e}); not measured.']
  strategy = parallel.make_parallel('jit')
  state = strategy.put_state(run.initial_state())
  step = strategy.train_step(train.make_train_step(run.model, run.tx, None), state)
  decoding = train.make_batches(
      config, datasets.get_source({**config.data.to_dict(), 'cache': False}, 'train'),
      training=True)
  in_memory = [next(decoding) for _ in range(sizes.pipeline_steps)]
  feeds = {'decoding': lambda: _take(decoding, sizes.pipeline_steps)}
  cached = None
  if config.data.get('cache', False):  # decode the whole split first: the epochs after the first
    source = run.source('train')
    for i in range(len(source)):
      source[i]  # pylint: disable=pointless-statement
    cached = run.batches('train', training=True)
    feeds['cached'] = lambda: _take(cached, sizes.pipeline_steps)

  def loop(batches):
    """examples/s of training on `batches` (an iterable: pipeline batches are pulled lazily,
    inside the timing, as the training loop pulls them)."""
    nonlocal state
    start, count = time.perf_counter(), 0
    for batch in batches:
      state, metrics = step(state, strategy.put_batch(batch))
      if run.sync:
        metrics['loss'].block_until_ready()
      count += 1
    metrics['loss'].block_until_ready()
    return count * b / (time.perf_counter() - start)

  loop(in_memory[:2])  # compile
  for feed in feeds.values():
    loop(feed())  # start the prefetch threads
  rates = {name: [] for name in ['memory', *feeds]}
  for _ in range(sizes.repeats):
    for name, feed in (('memory', lambda: in_memory), *feeds.items()):
      rates[name].append(loop(feed()))
  memory = np.array(rates['memory'])
  labels = {'decoding': f'the input pipeline ({source_name}, grain), decoding every example',
            'cached': 'the same pipeline after the first epoch (config.data.cache: decoded '
                      'examples in memory)'}
  rows = ['| batches from | examples/s (median) | % of in-memory (median of rounds) |',
          '|---|---|---|', f'| memory (pre-loaded) | {np.median(memory):.0f} | 100% |']
  for name in feeds:
    share = 100 * np.median(np.array(rates[name]) / memory)
    rows.append(f'| {labels[name]} | {np.median(rates[name]):.0f} | {share:.1f}% |')
  rows += ['', f'{sizes.repeats} interleaved rounds of {sizes.pipeline_steps} steps at batch {b}; '
           'in-memory rate per round: ' + ', '.join(f'{r:.0f}' for r in memory) + ' ex/s.']
  for pipeline in (decoding, cached):
    if pipeline is not None:
      pipeline.close()
  if cached is not None:  # the CPU a cached batch costs, built in this thread (no prefetch)
    from crossmodal.data import input_pipeline  # pylint: disable=g-import-not-at-top
    serial = input_pipeline.make_pipeline(
        run.source('train'), global_batch_size=b, seed=config.seed, process_index=0,
        process_count=1, prefetch_threads=0)
    next(serial)
    cpu, wall = time.thread_time(), time.perf_counter()
    for _ in range(sizes.pipeline_steps):
      next(serial)
    cpu_ms = 1e3 * (time.thread_time() - cpu) / sizes.pipeline_steps
    wall_ms = 1e3 * (time.perf_counter() - wall) / sizes.pipeline_steps
    step_ms = 1e3 * b / float(np.median(memory))
    rows += ['', f'Building one cached batch of {b} in the calling thread takes {cpu_ms:.1f} ms '
             f'of its CPU, {wall_ms:.1f} ms of wall time ({100 * wall_ms / step_ms:.1f}% of a '
             f'{step_ms:.0f} ms training step).']
  # What the cache saves: decoding from a fresh (uncached) source, one example at a time.
  fresh = datasets.get_source({**config.data.to_dict(), 'cache': False}, 'train')
  n = min(len(fresh), 50 * sizes.pipeline_steps)
  start, cpu = time.perf_counter(), time.process_time()
  for i in range(n):
    fresh[i]  # pylint: disable=pointless-statement
  wall_ms = 1e3 * (time.perf_counter() - start) / n
  cpu_ms = 1e3 * (time.process_time() - cpu) / n
  rows += ['', f'Decoding one training example from the uncached source takes {wall_ms:.2f} ms '
           f'({cpu_ms:.2f} ms of CPU; {n} examples).']
  return rows


def _take(pipeline, n: int):
  """Batches pulled from the pipeline as the loop consumes them (lazily, inside the timing)."""
  for _ in range(n):
    yield next(pipeline)


# ----------------------------------------------------------------------------- start-up


# Runs a module as __main__ and, at exit, writes the process's own peak RSS (VmHWM, KiB) to the
# file named by argv[1]. The child's rusage would not do: Linux carries the parent's RSS high-water
# mark across fork + exec into the child's ru_maxrss, so a benchmark holding the AV-MNIST cache
# made a 1-step run look 3 GB large.
_PEAK_RSS_WRAPPER = """
import atexit, runpy, sys
out, flag, module = sys.argv.pop(1), sys.argv.pop(1), sys.argv.pop(1)  # file, '-m', module
def report():
  with open('/proc/self/status') as status:
    peak = [line.split()[1] for line in status if line.startswith('VmHWM:')]
  with open(out, 'w') as f:
    f.write(peak[0])
atexit.register(report)
runpy.run_module(module, run_name='__main__', alter_sys=True)
"""


def section_startup() -> list[str]:
  """Launch to first finished step (compile included) and peak RSS of `crossmodal.main`; the
  same measurement at every size: one step of the real config."""
  arg = 'steps=1'
  with tempfile.TemporaryDirectory() as workdir:
    flags = [f'--config={AVMNIST}:{arg}', f'--workdir={workdir}', '--mode=train',
             '--config.train.checkpoint_every=0', '--config.evaluators.test.every=0',
             '--config.evaluators.validation.max_batches=1']
    peak_file = os.path.join(workdir, 'peak_rss_kib')
    if os.path.exists('/proc/self/status'):
      command = [sys.executable, '-c', _PEAK_RSS_WRAPPER, peak_file, '-m', 'crossmodal.main']
    else:  # no procfs: the rusage of the child (may include this process's peak, see above)
      command = [sys.executable, '-m', 'crossmodal.main']
    with tempfile.TemporaryFile('w+') as stderr:
      start = time.perf_counter()
      child = subprocess.Popen(command + flags, stdout=subprocess.DEVNULL, stderr=stderr,
                               cwd=REPO)
      _, status, usage = os.wait4(child.pid, 0)
      seconds = time.perf_counter() - start
      child.returncode = os.waitstatus_to_exitcode(status)
      stderr.seek(0)
      errors = stderr.read()
    if child.returncode:
      return [f'Start-up: the run failed ({errors.strip().splitlines()[-1:]}); not measured.']
    if os.path.exists(peak_file):
      with open(peak_file, encoding='utf-8') as f:
        rss_mib, how = int(f.read()) / 1024, 'VmHWM of the process'
    else:
      rss_mib, how = usage.ru_maxrss / 1024, 'ru_maxrss of the child'
  return ['| measure | value |', '|---|---|',
          f'| launch to end of a 1-step run (data prepared; compile, one eval batch, one '
          f'checkpoint included) | {seconds:.1f} s |',
          f'| peak resident memory of that process ({how}) | {rss_mib:.0f} MiB |',
          '', f'Command: `python -m crossmodal.main --config=experiments/avmnist.py:{arg} ...`']


# ----------------------------------------------------------------------------- scaling


def section_scaling(sizes: Sizes) -> list[str]:
  """Forward+backward time of the cross-attention fusion block alone (2 modalities, D=64)."""
  from crossmodal.models import fusion as fusion_lib  # pylint: disable=g-import-not-at-top
  from crossmodal.models.encoders import Encoded  # pylint: disable=g-import-not-at-top
  module = fusion_lib.build_fusion(fusion_lib.fusion_config('crossattn', dropout=0.0),
                                   modalities=('image', 'audio'), num_classes=10)
  rows = ['| batch | tokens per modality | ms per step (fwd+bwd) | us per example-token |',
          '|---|---|---|---|']
  for b in sizes.scaling_batches:
    for n in sizes.scaling_tokens:
      rng = np.random.default_rng(0)
      enc = {m: Encoded(jnp.asarray(rng.normal(size=(b, n, 64)), jnp.float32),
                        jnp.ones((b, n), bool), jnp.asarray(rng.normal(size=(b, 64)), jnp.float32))
             for m in ('image', 'audio')}
      params = module.init(jax.random.PRNGKey(0), enc)

      def loss(p, enc=enc):
        return module.apply(p, enc)['logits'].sum()
      grad = jax.jit(jax.grad(loss))
      seconds = float(np.median(timed(lambda: jax.block_until_ready(grad(params)),
                                      sizes.steps, sizes.repeats)))
      rows.append(f'| {b} | {n} | {1e3 * seconds:.2f} | {1e6 * seconds / (b * n):.2f} |')
  return rows


# ----------------------------------------------------------------------------- LeNet layers

# (input map, kernel, in -> out channels) of the AV-MNIST LeNets: audio on the 101x64 log-mel,
# image on 28x28 (experiments/avmnist.py).
LENET_LAYERS = (('audio', (101, 64), 5, 1, 6), ('audio', (50, 32), 3, 6, 12),
                ('audio', (25, 16), 3, 12, 24), ('audio', (12, 8), 3, 24, 48),
                ('audio', (6, 4), 3, 48, 96), ('audio', (3, 2), 3, 96, 192),
                ('image', (28, 28), 5, 1, 6), ('image', (14, 14), 3, 6, 12),
                ('image', (7, 7), 3, 12, 24), ('image', (3, 3), 3, 24, 48))


def section_layers(sizes: Sizes) -> list[str]:
  """Per LeNet stage (conv, ReLU, 2x2 max-pool; forward + backward to input and kernel): XLA's
  convolution and nn.max_pool vs crossmodal.models.conv's paths, which the encoders use."""
  import flax.linen as nn  # pylint: disable=g-import-not-at-top
  from crossmodal.models import conv  # pylint: disable=g-import-not-at-top
  b = max(sizes.batch_sizes)
  rows = [f'Batch {b}, float32; the conv path chosen by `conv.choose_impl` is named.', '',
          '| encoder | map | conv | XLA conv + nn.max_pool ms | crossmodal ms | speed-up |',
          '|---|---|---|---|---|---|']
  total = [0.0, 0.0]
  for encoder, (h, w), k, cin, cout in LENET_LAYERS:
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.normal(size=(b, h, w, cin)), jnp.float32)
    kernel = jnp.asarray(rng.normal(size=(k, k, cin, cout)) * 0.1, jnp.float32)
    times = []
    for impl, pool in (('lax', lambda y: nn.max_pool(y, (2, 2), strides=(2, 2))),
                       ('auto', conv.max_pool_2x2)):
      def loss(x, kernel, impl=impl, pool=pool):
        return (pool(nn.relu(conv.conv2d_same(x, kernel, impl))) ** 2).sum()
      grad = jax.jit(jax.grad(loss, argnums=(0, 1)))
      times.append(float(np.median(timed(lambda: jax.block_until_ready(grad(x, kernel)),
                                         max(2, sizes.steps // 4), sizes.repeats))))
    total = [total[0] + times[0], total[1] + times[1]]
    rows.append(f'| {encoder} | {h}x{w}x{cin} | {k}x{k} to {cout} '
                f'({conv.choose_impl(x.shape, kernel.shape)}) | {1e3 * times[0]:.1f} | '
                f'{1e3 * times[1]:.1f} | {times[0] / times[1]:.2f}x |')
  rows.append(f'| all | | | {1e3 * total[0]:.1f} | {1e3 * total[1]:.1f} | '
              f'{total[0] / total[1]:.2f}x |')
  return rows


# ----------------------------------------------------------------------------- main


def environment() -> list[str]:
  import flax  # pylint: disable=g-import-not-at-top
  devices = jax.devices()
  return [f'- date: {datetime.date.today().isoformat()}',
          f'- machine: {platform.machine()}, {_cpu_threads()} CPU threads, '
          f'{devices[0].platform} x{len(devices)} ({devices[0].device_kind})',
          f'- Python {platform.python_version()}, jax {jax.__version__}, flax {flax.__version__}']


def run_benchmarks(sizes: Sizes, sections: Sequence[str], cores: Sequence[int]) -> str:
  parts = ['# Benchmark results', '', *environment(), '']
  table = {
      'torch': ('Training throughput vs PyTorch (same model, same batches, SGD)',
                lambda: section_vs_torch(sizes, cores)),
      'utilisation': ('Hardware utilisation', lambda: section_utilisation(sizes)),
      'features': ('Featurization: JAX (jitted) vs librosa (batched float32)',
                   lambda: section_featurization(sizes, cores)),
      'pipeline': ('Input pipeline', lambda: section_pipeline(sizes)),
      'startup': ('Start-up and memory (default AV-MNIST config)', section_startup),
      'scaling': ('Cross-attention block: cost as batch and sequence grow',
                  lambda: section_scaling(sizes)),
      'layers': ('LeNet stages: XLA convolution and max-pool vs the fast paths',
                 lambda: section_layers(sizes)),
  }
  for key in sections:
    title, fn = table[key]
    print(f'== {title}', flush=True)
    lines = fn()
    print('\n'.join(lines), flush=True)
    parts += [f'## {title}', '', *lines, '']
  return '\n'.join(parts)


SECTIONS = ('torch', 'utilisation', 'features', 'pipeline', 'startup', 'scaling', 'layers')


def main(argv: Sequence[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--quick', action='store_true', help='smaller sizes (duration unmeasured)')
  p.add_argument('--tiny', action='store_true',
                 help='smallest sizes, eager PyTorch only (what the tests run; minutes)')
  p.add_argument('--sections', default=','.join(SECTIONS), help=f'subset of {SECTIONS}')
  p.add_argument('--out', default=None, help='also write the Markdown report here')
  p.add_argument('--cores', default=None,
                 help='comma-separated CPU cores the workers are pinned to (default: all of '
                      "this process's)")
  args = p.parse_args(argv)
  sections = [s.strip() for s in args.sections.split(',') if s.strip()]
  unknown = sorted(set(sections) - set(SECTIONS))
  if unknown:
    p.error(f'unknown sections {unknown}; valid: {SECTIONS}')
  sizes = TINY if args.tiny else QUICK if args.quick else Sizes()
  cores = ([int(c) for c in args.cores.split(',')] if args.cores
           else sorted(os.sched_getaffinity(0)))
  report = run_benchmarks(sizes, sections, cores)
  if args.out:
    with open(args.out, 'w', encoding='utf-8') as f:
      f.write(report + '\n')
  return 0


if __name__ == '__main__':
  sys.exit(main())
