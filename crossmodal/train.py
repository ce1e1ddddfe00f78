"""The one training loop: `train_and_evaluate(config, workdir)`, and `evaluate` for a checkpoint.

What happens, in order (every process runs the same code on its own slice of the data):
validate the config; lock the workdir; build data, model and optimizer; restore the latest
checkpoint (train state + input-pipeline position) if the workdir has one; then train:
compiled once, data parallel (`parallel.py`), metrics fetched only at log/eval/checkpoint
steps, evaluation on the validation and test splits every `eval_every` steps, asynchronous
checkpoints (last K plus the best by the validation metric). SIGTERM saves and exits; a
non-finite loss stops with an error and leaves the last good checkpoint as the latest.

Exact resume: the dropout key of step s is `fold_in(state.rng, s)`, the input pipeline
restarts at the saved position and XLA on a fixed device layout is deterministic, so a run
killed at any step and restarted ends with bitwise the same parameters as one that was not.
"""
from __future__ import annotations

import dataclasses
import functools
import json
import os
import platform
import signal
import subprocess
from typing import Any, Callable

from absl import logging
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from crossmodal import checkpointing
from crossmodal import config_utils
from crossmodal import files
from crossmodal import metrics as metrics_lib
from crossmodal import objectives as objectives_lib
from crossmodal import optim
from crossmodal import parallel

# Test-only hooks: send this process a signal (default SIGKILL) right after step N, to test
# exact resume after a crash and the save-on-SIGTERM path without timing races.
KILL_AT_STEP_ENV = 'CROSSMODAL_TEST_KILL_AT_STEP'
KILL_SIGNAL_ENV = 'CROSSMODAL_TEST_KILL_SIGNAL'
CHECKPOINT_DIR = 'checkpoints'


class NonFiniteLossError(FloatingPointError):
  """Training produced a NaN/Inf loss; the last good checkpoint stays the latest."""


@flax.struct.dataclass
class TrainState:
  """Everything that changes during training, as one pytree (checkpointed as a whole).

  step: micro-batch steps done; rng: raw uint32 PRNG key (per-step keys are folded from it).
  """
  step: jax.Array
  params: Any
  batch_stats: Any
  opt_state: Any
  rng: jax.Array


@dataclasses.dataclass
class RunResult:
  """What a run returns: the final state (replicated global arrays) and eval summaries."""
  step: int
  state: TrainState
  metrics: dict[str, dict[str, Any]]
  preempted: bool = False  # stopped early by SIGTERM (state saved at `step`)


# ----------------------------------------------------------------------------- building


def compute_dtype(config: Any) -> Any:
  return {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}[config.train.dtype]


def build_model(config: Any, num_classes: int, axis_name: str | None):
  """The model for `config.model`, computing in `config.train.dtype` (params stay float32)."""
  from crossmodal.models import model as model_lib  # pylint: disable=g-import-not-at-top
  return model_lib.build_model(config.model, num_classes, axis_name=axis_name,
                               dtype=compute_dtype(config), objectives=config.get('objectives'))


def check_buildable(config: Any) -> None:
  """Raises ValueError naming the bad option if the data or model config cannot be built.

  Runs before any data is read or prepared and before anything is compiled, so a wrong
  fusion switch costs a second, not a one-minute dataset build. The class count is not known
  yet (it comes from the prepared dataset), so the model is checked with a placeholder.
  """
  datasets, _ = _data()
  available = datasets.check_config(config.data)
  missing = [m for m in config.model.modalities if m not in available]
  if missing:
    raise ValueError(f'config.model.modalities={list(config.model.modalities)}: dataset '
                     f'{config.data.name!r} has no {missing}; it has {list(available)}')
  model = build_model(config, num_classes=2, axis_name=None)
  from crossmodal import evaluators  # pylint: disable=g-import-not-at-top
  evaluators.check_config(config.get('evaluators'), model, config.get('objectives'))
  if 'zero_shot' in (config.get('evaluators') or {}):
    datasets.check_class_name_text(config.data)


def _variables(params: Any, batch_stats: Any) -> dict[str, Any]:
  variables = {'params': params}
  if batch_stats:
    variables['batch_stats'] = batch_stats
  return variables


def make_init_fn(model, tx: optax.GradientTransformation,
                 sample_batch: dict[str, Any]) -> Callable[[jax.Array], TrainState]:
  """init(rng) -> TrainState; the sample batch fixes input shapes only."""
  shapes = {k: jax.ShapeDtypeStruct((2,) + v.shape[1:], v.dtype) for k, v in sample_batch.items()}

  def init(rng):
    init_rng, dropout_rng, train_rng = jax.random.split(rng, 3)
    dummy = {k: jnp.zeros(s.shape, s.dtype) for k, s in shapes.items()}
    variables = model.init({'params': init_rng, 'dropout': dropout_rng}, dummy, train=False)
    params = variables['params']
    batch_stats = variables.get('batch_stats', {})
    return TrainState(step=jnp.zeros((), jnp.int32), params=params, batch_stats=batch_stats,
                      opt_state=tx.init(params), rng=train_rng)
  return init


def modality_dropout_mask(rng: jax.Array, batch_size: int, num_modalities: int,
                          rate: float) -> jax.Array:
  """bool [B, M]: each modality hidden with probability `rate`, independently per example;
  an example that would lose all of them keeps one, chosen uniformly."""
  drop_rng, keep_rng = jax.random.split(rng)
  present = jax.random.uniform(drop_rng, (batch_size, num_modalities)) >= rate
  keep = jax.nn.one_hot(jax.random.randint(keep_rng, (batch_size,), 0, num_modalities),
                        num_modalities, dtype=bool)
  return jnp.where(present.any(axis=1, keepdims=True), present, keep)


def make_train_step(model, tx: optax.GradientTransformation, axis_name: str | None,
                    modality_dropout: float = 0.0, objectives: Any = None):
  """(state, batch) -> (state, metrics). Under pmap (`axis_name` set) gradients, metrics and
  BatchNorm statistics are averaged over devices; under jit XLA reduces the global batch.

  objectives: `config.objectives` (None: classification only); the loss is their weighted
  sum, and each one's loss is logged as `loss_<objective>`.
  modality_dropout: probability of hiding each modality of each training example from the
  fusion (through the model's `present` mask), so the model learns to cope without it.
  """

  def train_step(state: TrainState, batch: dict[str, jax.Array]):
    rng = jax.random.fold_in(state.rng, state.step)
    rng = jax.random.fold_in(rng, parallel.device_index(axis_name))
    present = None
    if modality_dropout > 0:
      rng, mask_rng = jax.random.split(rng)
      present = modality_dropout_mask(mask_rng, batch['label'].shape[0], len(model.modalities),
                                      modality_dropout)

    def loss_fn(params):
      out, updates = model.apply(_variables(params, state.batch_stats), batch, present=present,
                                 train=True, rngs={'dropout': rng}, mutable=['batch_stats'])
      means = {name: value / count for name, (value, count) in
               objectives_lib.compute(objectives, out, batch, axis_name=axis_name).items()}
      aux = ({f'loss_{name}': value for name, value in means.items()}
             if len(means) > 1 or 'classification' not in means else {})
      if 'classification' in means:  # else the classifier is untrained: no accuracy to show
        aux['accuracy'] = (jnp.argmax(out['logits'], -1) == batch['label']).mean()
      if 'logit_scale' in out:
        aux['temperature'] = 1.0 / out['logit_scale']
      return objectives_lib.total(objectives, means), (updates.get('batch_stats', {}), aux)

    (loss, (batch_stats, aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grads = parallel.pmean_if(grads, axis_name)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                              opt_state=opt_state)
    metrics = {'loss': loss, **aux, 'grad_norm': optax.tree.norm(grads)}
    return new_state, parallel.pmean_if(metrics, axis_name)

  return train_step


def empty_eval_accumulator(num_classes: int, objectives: Any = None) -> dict[str, Any]:
  return {'confusion': np.zeros((num_classes, num_classes), np.int32),
          'losses': {name: np.zeros((2,), np.float32)
                     for name in objectives_lib.active(objectives)}}


def make_eval_step(model, num_classes: int, axis_name: str | None, objectives: Any = None):
  """(state, batch, acc) -> acc: adds the batch's confusion matrix and each objective's loss
  sum and count, skipping padding examples (`batch['mask'] == 0`, added by the eval pipeline
  to the last batch)."""

  def eval_step(state: TrainState, batch: dict[str, jax.Array], acc: dict[str, Any]):
    out = model.apply(_variables(state.params, state.batch_stats), batch, train=False)
    labels = batch['label']
    mask = batch['mask'] if 'mask' in batch else jnp.ones(labels.shape, jnp.bool_)
    losses = objectives_lib.compute(objectives, out, batch, mask=mask, axis_name=axis_name)
    update = {
        'confusion': metrics_lib.confusion_matrix(labels, jnp.argmax(out['logits'], -1),
                                                  num_classes, mask),
        'losses': {name: jnp.stack(pair) for name, pair in losses.items()},
    }
    update = parallel.psum_if(update, axis_name)
    return jax.tree.map(jnp.add, acc, update)

  return eval_step


def summarize_eval(acc: dict[str, Any], objectives: Any = None) -> dict[str, Any]:
  """Classification metrics from the confusion matrix (only when the classifier is trained);
  `loss` = the weighted objective (the classification cross-entropy by default), and
  `loss_<objective>` for each objective."""
  means = {name: float(value / max(float(count), 1.0))
           for name, (value, count) in acc['losses'].items()}
  summary = (metrics_lib.summarize_confusion(acc['confusion']) if 'classification' in means
             else {'num_examples': int(np.asarray(acc['confusion']).sum())})
  summary['loss'] = float(objectives_lib.total(objectives, means))
  if len(means) > 1 or 'classification' not in means:
    summary.update({f'loss_{name}': value for name, value in means.items()})
  return summary


# ----------------------------------------------------------------------------- data


def _data():
  from crossmodal.data import datasets  # pylint: disable=g-import-not-at-top
  from crossmodal.data import input_pipeline  # pylint: disable=g-import-not-at-top
  return datasets, input_pipeline


def make_batches(config: Any, source: Any, split: str, start_index: int = 0):
  """This process's batches of `split` (an `input_pipeline.Pipeline`; call `.close()`).

  train: shuffled, repeated forever, starting after `start_index` consumed batches.
  Other splits: one ordered pass, the final batch padded (with `mask`) so that every process
  runs the same number of eval steps.
  """
  _, input_pipeline = _data()
  training = split == 'train'
  return input_pipeline.make_pipeline(
      source,
      global_batch_size=(config.data.global_batch_size if training
                         else config.data.eval_batch_size),
      seed=config.seed, shuffle=training, drop_remainder=training,
      process_index=jax.process_index(), process_count=jax.process_count(),
      num_epochs=None if training else 1, start_index=start_index,
      worker_count=config.data.get('worker_count', 0))


# ----------------------------------------------------------------------------- the run


class _Run:
  """Builds everything a run needs once; shared by training and checkpoint evaluation."""

  def __init__(self, config: Any):
    config_utils.validate(config, jax.device_count(), jax.process_count())
    check_buildable(config)
    self.config = config
    self._sources: dict[str, Any] = {}
    datasets, _ = _data()
    # Opening a split first prepares the dataset if needed (AV-MNIST: a one-time build).
    self.source(config.train.eval_splits[0])
    self.num_classes = int(datasets.dataset_info(config.data).num_classes)
    self.strategy = parallel.make_parallel(config.train.parallel)
    self.model = build_model(config, self.num_classes, self.strategy.axis_name)
    self.tx = optim.make_optimizer(config.optim, config.train.num_steps)
    self.sync = parallel.resolve_sync_every_step(config.train.sync_every_step)
    self.objectives = config.get('objectives')
    self._eval_step = self.strategy.eval_step(
        make_eval_step(self.model, self.num_classes, self.strategy.axis_name, self.objectives))

  @functools.cached_property
  def eval_strategy(self) -> parallel.JitParallel:
    """Evaluators run jitted over the mesh, on the checkpoint's replicated global arrays."""
    mesh = getattr(self.strategy, 'mesh', None)
    return self.strategy if self.strategy.name == 'jit' else parallel.JitParallel(mesh)

  @functools.cached_property
  def evaluator_forward(self) -> Callable:
    """forward_for(select, keep, attention) -> jitted forward (evaluators.make_forward)."""
    from crossmodal import evaluators  # pylint: disable=g-import-not-at-top
    model = build_model(self.config, self.num_classes, axis_name=None)
    variables = lambda state: _variables(state.params, state.batch_stats)
    return evaluators.make_forward(model, variables, self.eval_strategy)

  def source(self, split: str) -> Any:
    if split not in self._sources:
      datasets, _ = _data()
      self._sources[split] = datasets.get_source(self.config.data, split)
    return self._sources[split]

  def batches(self, split: str, start_index: int = 0):
    return make_batches(self.config, self.source(split), split, start_index)

  def initial_state(self, abstract: bool = False) -> Any:
    """Freshly initialised state as replicated global arrays (the checkpoint layout).

    abstract=True: only shapes, dtypes and shardings (a restore target; nothing compiled).
    """
    pipeline = self.batches(self.config.train.eval_splits[0])
    try:
      sample = next(pipeline)  # fixes input shapes only
    finally:
      pipeline.close()
    init = make_init_fn(self.model, self.tx, sample)
    rng = jax.random.PRNGKey(self.config.seed)
    if abstract:
      shapes = jax.eval_shape(init, rng)
      return jax.tree.map(
          lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=self.strategy.replicated),
          shapes)
    return jax.jit(init, out_shardings=self.strategy.replicated)(rng)

  def evaluate(self, device_state: Any, split: str) -> dict[str, Any]:
    """Loss, accuracy, macro-F1, per-class P/R/F1 and the confusion matrix on `split`."""
    acc = self.strategy.put_accumulator(empty_eval_accumulator(self.num_classes,
                                                               self.objectives))
    limit = self.config.train.max_eval_batches
    pipeline = self.batches(split)
    try:
      for i, batch in enumerate(pipeline):
        if limit and i >= limit:
          break
        acc = self._eval_step(device_state, self.strategy.put_batch(batch), acc)
        if self.sync:
          jax.block_until_ready(acc)
    finally:
      pipeline.close()
    return summarize_eval(self.strategy.fetch(acc), self.objectives)


def _best_metric(config: Any) -> tuple[str, str]:
  metric = config.train.best_metric
  return f'validation/{metric}', ('min' if metric == 'loss' else 'max')


RUN_INFO = 'run_info.json'


def code_version() -> dict[str, Any]:
  """The code a run used: the git commit of this checkout (None outside one), whether it had
  uncommitted changes or untracked files (ignored ones aside), and the versions of the
  libraries that decide the numbers (None if one is not installed)."""
  import importlib.metadata  # pylint: disable=g-import-not-at-top
  here = os.path.dirname(os.path.abspath(__file__))

  def git(*args: str) -> str | None:
    try:
      out = subprocess.run(['git', '-C', here, *args], capture_output=True, text=True,
                           timeout=30, check=True)
    except (OSError, subprocess.SubprocessError):
      return None
    return out.stdout.strip()

  commit = git('rev-parse', 'HEAD')
  dirty = git('status', '--porcelain') if commit else None

  def version(name: str) -> str | None:
    try:
      return importlib.metadata.version(name)
    except importlib.metadata.PackageNotFoundError:
      return None

  return {'git_commit': commit, 'git_dirty': None if dirty is None else bool(dirty),
          **{name: version(name) for name in ('jax', 'jaxlib', 'flax', 'optax',
                                              'orbax-checkpoint')}}


def host_cpu() -> str:
  """The CPU model: XLA's CPU code and NumPy's BLAS depend on it, so the same seed can end
  about a tenth of a point apart on two machines (bitwise equal on one)."""
  try:
    with open('/proc/cpuinfo', encoding='utf-8') as f:
      for line in f:
        if line.startswith('model name'):
          return line.split(':', 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def write_run_info(workdir: str, state: TrainState, run: _Run) -> None:
  """`<workdir>/run_info.json`: what the sweep runner reports beside the metrics, and the code
  version of the latest attempt (rewritten on every start)."""
  from crossmodal.models import model as model_lib  # pylint: disable=g-import-not-at-top
  info = {'num_params': model_lib.count_params(state.params),
          'params_by_part': model_lib.param_counts_by_part(state.params),
          'device_count': jax.device_count(), 'process_count': jax.process_count(),
          'backend': jax.default_backend(), 'device_kind': jax.devices()[0].device_kind,
          'host_cpu': host_cpu(), 'parallel': run.config.train.parallel,
          'code': code_version()}
  files.write_file(os.path.join(workdir, RUN_INFO), json.dumps(info, indent=2) + '\n')


def make_checkpointer(config: Any, workdir: str) -> checkpointing.Checkpointer:
  best_metric, best_mode = _best_metric(config)
  keep_best = 'validation' in config.train.eval_splits
  return checkpointing.Checkpointer(
      os.path.join(workdir, CHECKPOINT_DIR), max_to_keep=config.train.keep_checkpoints,
      keep_best=keep_best, best_metric=best_metric, best_mode=best_mode,
      async_save=config.train.async_checkpoints)


def _flat(split_metrics: dict[str, dict[str, Any]]) -> dict[str, float]:
  """{'validation': {'accuracy': .9}} -> {'validation/accuracy': .9} (scalars only)."""
  return {f'{split}/{k}': v for split, m in split_metrics.items() for k, v in m.items()
          if isinstance(v, (int, float))}


def _maybe_kill(step: int) -> None:
  target = os.environ.get(KILL_AT_STEP_ENV)
  if target and int(target) == step:
    name = os.environ.get(KILL_SIGNAL_ENV, 'SIGKILL')
    logging.warning('%s=%s: sending %s to myself after step %d', KILL_AT_STEP_ENV, target,
                    name, step)
    os.kill(os.getpid(), getattr(signal, name))


def train_and_evaluate(config: Any, workdir: str) -> RunResult:
  """Trains `config` in `workdir` (resuming the latest checkpoint there) and evaluates.

  Returns the final state and the last evaluation of every split in `train.eval_splits`.
  Raises config_utils.ConfigError before building anything if the config is invalid,
  checkpointing.WorkdirLockedError if another run holds the workdir, and
  NonFiniteLossError if the loss becomes NaN/Inf.
  """
  config_utils.validate(config, jax.device_count(), jax.process_count())
  with checkpointing.WorkdirLock(workdir):
    run = _Run(config)
    ckpt = make_checkpointer(config, workdir)
    writer = metrics_lib.MetricWriter(workdir, enabled=jax.process_index() == 0)
    try:
      return _train(run, ckpt, writer, workdir)
    finally:
      ckpt.close()
      writer.close()


def _train(run: _Run, ckpt: checkpointing.Checkpointer, writer: metrics_lib.MetricWriter,
           workdir: str) -> RunResult:
  config, strategy = run.config, run.strategy
  tc = config.train
  start_step, position = 0, 0
  if ckpt.latest_step() is None:
    state = run.initial_state()
  else:
    config_utils.check_same_config(config, workdir)
    state, position, meta = ckpt.restore(run.initial_state(abstract=True))
    start_step = int(meta['step'])
    logging.info('resumed from %s step %d (input position %d)', ckpt.directory, start_step,
                 position)
  writer.discard_after(start_step)  # records after the checkpoint (if any) are redone now
  if jax.process_index() == 0:  # After a successful restore: a mismatched config never lands.
    config_utils.write_config(config, workdir)
    write_run_info(workdir, state, run)
  device_state = strategy.put_state(state)
  del state

  train_step = strategy.train_step(make_train_step(run.model, run.tx, strategy.axis_name,
                                                   tc.modality_dropout, run.objectives))
  batches = run.batches('train', position)
  throughput = metrics_lib.Throughput(config.data.global_batch_size, start_step)
  pending: list[Any] = []  # per-step device metrics not yet fetched
  fetched: list[dict[str, np.ndarray]] = []  # fetched since the last log
  eval_metrics: dict[str, dict[str, Any]] = {}
  preemption = checkpointing.install_preemption_handler()

  def check_finite(step: int) -> None:
    """Fetches pending metrics; raises if any step's loss was NaN/Inf."""
    nonlocal pending
    if not pending:
      return
    host = metrics_lib.stack_history(pending)
    first = step - len(pending) + 1
    pending = []
    fetched.append(host)
    bad = np.flatnonzero(~np.isfinite(host['loss']))
    if bad.size:
      ckpt.wait_until_finished()
      hints = ['a lower config.optim.lr', 'config.optim.grad_clip=1.0']
      if tc.dtype != 'float32':
        hints.append('config.train.dtype=float32')
      raise NonFiniteLossError(
          f'loss is {host["loss"][bad[0]]} at step {first + bad[0]}: training stopped. The '
          f'last good checkpoint (step {ckpt.latest_step()}) in {ckpt.directory} is kept as '
          f'the latest. Try {", ".join(hints)}.')

  stop = False
  try:
    step = start_step
    for step in range(start_step + 1, tc.num_steps + 1):
      batch = strategy.put_batch(next(batches))
      device_state, step_metrics = train_step(device_state, batch)
      pending.append(step_metrics)
      if run.sync:
        jax.block_until_ready(step_metrics['loss'])

      last = step == tc.num_steps
      do_log = step % tc.log_every == 0 or last
      do_eval = (tc.eval_every and step % tc.eval_every == 0) or last
      do_save = (tc.checkpoint_every and step % tc.checkpoint_every == 0) or do_eval
      stop = preemption.should_stop(step)
      if do_log or do_eval or do_save or stop:
        check_finite(step)
      if do_log:
        host = {k: np.concatenate([f[k] for f in fetched]) for k in fetched[0]}
        fetched.clear()
        summary = {k: float(v.mean()) for k, v in host.items()}
        summary.update(throughput(step))
        summary['lr'] = float(optim.current_lr(config.optim, tc.num_steps, step - 1))
        writer.write(step, 'train', summary)
      if do_eval:
        eval_metrics = {split: run.evaluate(device_state, split) for split in tc.eval_splits}
        for split, m in eval_metrics.items():
          writer.write(step, split, m)
        throughput.reset(step)  # evaluation time is not training throughput
      if do_save or stop:
        ckpt.save(step, strategy.global_state(device_state), pipeline_position=batches.position,
                  metrics=_flat(eval_metrics) if do_eval else None, force=stop)
      _maybe_kill(step)
      if stop:
        logging.warning('preemption requested: saved step %d, exiting', step)
        break
    if step == start_step and start_step >= tc.num_steps:
      logging.info('workdir already trained to step %d; evaluating only', start_step)
      eval_metrics = {split: run.evaluate(device_state, split) for split in tc.eval_splits}
    ckpt.wait_until_finished()
  finally:
    preemption.close()
    batches.close()
  return RunResult(step=step, state=strategy.global_state(device_state), metrics=eval_metrics,
                   preempted=stop)


def restore_state(config: Any, workdir: str, checkpoint: str | int = 'latest'):
  """(state, meta) of a checkpoint in `workdir`: 'latest', 'best' or a step number."""
  run = _Run(config)
  ckpt = make_checkpointer(config, workdir)
  try:
    target = run.initial_state(abstract=True)
    if checkpoint == 'best':
      state, _, meta = ckpt.restore(target, best=True)
    elif checkpoint == 'latest':
      state, _, meta = ckpt.restore(target)
    else:
      state, _, meta = ckpt.restore(target, step=int(checkpoint))
  finally:
    ckpt.close()
  return run, state, meta


def evaluate(config: Any, workdir: str, checkpoint: str | int = 'latest') -> dict[str, Any]:
  """Evaluates a checkpoint of `workdir` on every split in `train.eval_splits`, then runs
  the evaluators of `config.evaluators` (crossmodal/evaluators.py) on it.

  Writes the results to metrics.jsonl/TensorBoard as splits 'eval_<split>' / 'eval_<evaluator>'
  and returns {split or evaluator: summary}.
  """
  config_utils.validate(config, jax.device_count(), jax.process_count())
  run, state, meta = restore_state(config, workdir, checkpoint)
  device_state = run.strategy.put_state(state)
  step = int(meta['step'])
  results = {split: run.evaluate(device_state, split) for split in config.train.eval_splits}
  del device_state
  from crossmodal import evaluators  # pylint: disable=g-import-not-at-top
  results.update(evaluators.run_all(run, state, config.get('evaluators'), workdir))
  writer = metrics_lib.MetricWriter(workdir, enabled=jax.process_index() == 0)
  try:
    for name, m in results.items():
      writer.write(step, f'eval_{name}', m)
  finally:
    writer.close()
  return results
