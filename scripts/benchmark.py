r"""Benchmarks: training speed vs PyTorch, hardware utilisation, featurization, input pipeline,
start-up and memory, and how the cross-attention block scales.

  python scripts/benchmark.py --quick                 # a few minutes on a 2-core CPU
  python scripts/benchmark.py --out=docs/performance.md   # the full run

Every figure is measured in this run, on this machine: warm-up (compilation) is excluded and the
median of `--repeats` timed blocks is reported, with the absolute numbers beside each ratio. The
same script runs unchanged on a GPU or TPU host (the PyTorch reference then stays on the CPU
and is reported as such). Sections that cannot run here (no PyTorch installed, no FSDD sources,
AV-MNIST not prepared) say so in the table instead of a number.
"""
from __future__ import annotations

import argparse
import dataclasses
import datetime
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
  steps: int = 20  # timed steps per repeat
  repeats: int = 5
  clips: int = 1000  # featurization
  matmul: int = 2048
  pipeline_steps: int = 40
  scaling_tokens: tuple[int, ...] = (16, 64, 256)
  scaling_batches: tuple[int, ...] = (32, 128)
  transformer: str = 'small'  # experiments/base.py size for the utilisation section


QUICK = Sizes(steps=8, repeats=3, clips=200, matmul=1024, pipeline_steps=16,
              scaling_tokens=(16, 64), scaling_batches=(32,))
TINY = Sizes(batch_sizes=(8,), steps=2, repeats=2, clips=8, matmul=128, pipeline_steps=4,
             scaling_tokens=(8,), scaling_batches=(4,), transformer='tiny')


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

  def flops(self, device_batch) -> float:
    """FLOPs of one compiled step, from XLA's cost analysis."""
    return compiled_flops(self.step_fn, self.state, device_batch)


def compiled_flops(fn, *args) -> float:
  cost = fn.lower(*args).compile().cost_analysis()
  cost = cost[0] if isinstance(cost, (list, tuple)) else cost
  return float(cost.get('flops', float('nan')))


def jax_loss_trajectory(fusion: str, batches: Sequence[dict[str, np.ndarray]], steps: int
                        ) -> tuple[list[float], dict[str, Any]]:
  """Losses of `steps` SGD steps without dropout cycling through `batches`, and the initial
  variables (numpy) they started from."""
  trainer = JaxTrainer(sgd_config(fusion, dropout=0.0), batches[0])
  variables = jax.tree.map(np.asarray, trainer.variables())
  device_batches = [jax.device_put(b) for b in batches]
  losses = [trainer.step(device_batches[i % len(batches)]) for i in range(steps)]
  return [float(l) for l in losses], variables


# (row label, fusion): the models issue 6 compares with PyTorch; scripts/torch_reference.py
# implements both.
VS_TORCH_MODELS = (('LeNet concat (MultiBench)', 'concat'),
                   ('crossattn (LeNet tokens)', 'crossattn'))


def section_vs_torch(sizes: Sizes) -> list[str]:
  rows = ['| model | batch | crossmodal (JAX) ex/s | PyTorch ex/s | ratio |', '|---|---|---|---|---|']
  torch_ref = _torch_reference()
  for label, fusion in VS_TORCH_MODELS:
    config = sgd_config(fusion)
    for b in sizes.batch_sizes:
      ours = train_throughput_jax(config, b, sizes)['examples_per_sec']
      if torch_ref is None:
        rows.append(f'| {label} | {b} | {ours:.0f} | not installed '
                    "(pip install -e '.[bench]') | - |")
        continue
      theirs = torch_ref.train_throughput(random_batches(b, 4), steps=sizes.steps,
                                          threads=_cpu_threads(), repeats=sizes.repeats,
                                          fusion=fusion)
      t = theirs['examples_per_sec_median']
      rows.append(f'| {label} | {b} | {ours:.0f} | {t:.0f} | {ours / t:.2f}x |')
  return rows


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


def section_utilisation(sizes: Sizes) -> list[str]:
  peak = peak_matmul_flops(sizes.matmul, sizes)
  rows = [f'Peak: jitted float32 {sizes.matmul}x{sizes.matmul} matmul, {peak / 1e9:.1f} GFLOP/s.',
          '',
          '| model | batch | GFLOP per step (XLA cost analysis) | steps/s | GFLOP/s | '
          'utilisation |', '|---|---|---|---|---|---|']
  b = max(sizes.batch_sizes)
  cases = [(fusion, sgd_config(fusion), random_batches(b, 1)[0])
           for fusion in ('concat', 'crossattn')]
  cases.append(transformer_case(sizes.transformer))
  for i, (label, config, batch) in enumerate(cases):
    steps = sizes.steps if i < 2 else max(2, sizes.steps // 4)  # a transformer step takes seconds
    run, step, state, device_batch = jax_train_fn(config, batch)
    cost = step.lower(state, device_batch).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    flops = float(cost.get('flops', float('nan')))
    seconds = float(np.median(timed(run, steps, sizes.repeats)))
    achieved = flops / seconds
    rows.append(f'| {label} | {len(batch["label"])} | {flops / 1e9:.2f} | {1 / seconds:.2f} | '
                f'{achieved / 1e9:.1f} | {100 * achieved / peak:.1f}% |')
    del run, step, state, device_batch
  return rows


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


def section_featurization(sizes: Sizes) -> list[str]:
  """JAX featurizer over all clips in one jitted call and in training-batch-sized calls (the
  large call is memory-bound: its [clips, frames, n_fft] intermediates leave the caches),
  against librosa called per clip."""
  clips = fsdd_clips(sizes.clips)
  rows = ['| featurizer | JAX batching | JAX clips/s | librosa clips/s | ratio | max abs. deviation |',
          '|---|---|---|---|---|---|']
  if clips is None:
    return rows + ['| log-mel | - | FSDD sources not found (docs/data.md) | | | |']
  cfg = features.features_config()
  n = len(clips)
  chunk = min(FEATURE_BATCH, n)
  for name, jax_fn, ref_fn in (('log-mel (dB)', features.log_mel, features.librosa_log_mel),
                               ('MFCC', features.mfcc, features.librosa_mfcc)):
    f = jax.jit(lambda x, fn=jax_fn: fn(x, cfg))
    x = jnp.asarray(clips)
    chunks = [jnp.asarray(clips[i:i + chunk]) for i in range(0, n - n % chunk, chunk)]
    one_call = float(np.median(timed(lambda: f(x).block_until_ready(), 1, sizes.repeats)))
    per_batch = float(np.median(timed(lambda: jax.block_until_ready([f(c) for c in chunks]),
                                      1, sizes.repeats))) / (len(chunks) * chunk)
    ref_fn(clips[:2], cfg)  # warm-up: librosa's first call compiles/caches its kernels
    start = time.perf_counter()
    reference = ref_fn(clips, cfg)  # librosa, one call per clip (its normal use)
    theirs = (time.perf_counter() - start) / n
    deviation = float(np.abs(np.asarray(f(x)) - reference).max())
    for how, ours in ((f'{n} clips in one call', one_call / n),
                      (f'calls of {chunk} clips (the training batch)', per_batch)):
      rows.append(f'| {name} | {how} | {1 / ours:.0f} | {1 / theirs:.0f} | '
                  f'{theirs / ours:.1f}x | {deviation:.2g} |')
  return rows


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


def run_benchmarks(sizes: Sizes, sections: Sequence[str]) -> str:
  parts = ['# Benchmark results', '', *environment(), '']
  table = {
      'torch': ('Training throughput vs PyTorch (same model, same batches, SGD)',
                lambda: section_vs_torch(sizes)),
      'utilisation': ('Hardware utilisation', lambda: section_utilisation(sizes)),
      'features': ('Featurization: JAX (batched, jitted) vs librosa',
                   lambda: section_featurization(sizes)),
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
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  p.add_argument('--quick', action='store_true', help='smaller sizes, a few minutes on a CPU')
  p.add_argument('--tiny', action='store_true', help='smallest sizes (tests)')
  p.add_argument('--sections', default=','.join(SECTIONS), help=f'subset of {SECTIONS}')
  p.add_argument('--out', default=None, help='also write the Markdown report here')
  args = p.parse_args(argv)
  sections = [s.strip() for s in args.sections.split(',') if s.strip()]
  unknown = sorted(set(sections) - set(SECTIONS))
  if unknown:
    p.error(f'unknown sections {unknown}; valid: {SECTIONS}')
  sizes = TINY if args.tiny else QUICK if args.quick else Sizes()
  report = run_benchmarks(sizes, sections)
  if args.out:
    with open(args.out, 'w', encoding='utf-8') as f:
      f.write(report + '\n')
  return 0


if __name__ == '__main__':
  sys.exit(main())
