"""The one training loop: `train_and_evaluate(config, workdir)`, and `evaluate` for a checkpoint.

What happens, in order (every process runs the same code on its own slice of the data):
check the config (and build the evaluators) before anything else; lock the workdir; build
data, model and optimizer; restore the latest checkpoint (train state + input-pipeline
position) if the workdir has one; then train: compiled once, data parallel (`parallel.py`),
metrics fetched only at log/eval/checkpoint steps, the in-loop evaluators of
`config.evaluators` at their `every` steps (crossmodal/evaluators/), asynchronous checkpoints
(last K plus the best by `train.best_metric`). SIGTERM saves and exits; a non-finite loss
stops with an error and leaves the last good checkpoint as the latest. At the end every
evaluator runs on the chosen checkpoint.

Exact resume: the dropout key of step s is `fold_in(state.rng, s)`, the input pipeline
restarts at the saved position and XLA on a fixed device layout is deterministic, so a run
killed at any step and restarted ends with bitwise the same parameters as one that was not.
"""
from __future__ import annotations

import dataclasses
import os
from typing import Any, Callable

from absl import logging
from etils import epath
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

from crossmodal import checkpointing
from crossmodal import config_utils
from crossmodal import evaluators as evaluators_lib
from crossmodal import metrics as metrics_lib
from crossmodal import objectives as objectives_lib
from crossmodal import optim
from crossmodal import parallel
from crossmodal import run_info
from crossmodal import transfer
from crossmodal.models import encoders as encoders_lib

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
  metrics: dict[str, dict[str, Any]]  # the last in-loop evaluation, {evaluator: summary}
  preempted: bool = False  # stopped early by SIGTERM (state saved at `step`)
  # Every evaluator on the checkpoint chosen after training, {evaluator: summary}.
  final: dict[str, dict[str, Any]] = dataclasses.field(default_factory=dict)


# ----------------------------------------------------------------------------- building


def build_model(config: Any, num_classes: int, axis_name: str | None):
  """The model for `config.model`, computing in `config.train.dtype` (params stay float32)."""
  from crossmodal.models import model as model_lib  # pylint: disable=g-import-not-at-top
  return model_lib.build_model(config.model, num_classes, axis_name=axis_name,
                               dtype=config.train.dtype, objectives=config.get('objectives'))


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
                          rate: float, available: jax.Array | None = None) -> jax.Array:
  """bool [B, M]: each modality hidden with probability `rate`, independently per example;
  an example that would lose all of them keeps one, chosen uniformly. `available` [B, M]
  (data whose rows lack a modality): only those can be kept, and the kept one is among them."""
  drop_rng, keep_rng = jax.random.split(rng)
  present = jax.random.uniform(drop_rng, (batch_size, num_modalities)) >= rate
  if available is None:
    keep = jax.nn.one_hot(jax.random.randint(keep_rng, (batch_size,), 0, num_modalities),
                          num_modalities, dtype=bool)
  else:
    present = present & available
    draw = jnp.where(available, jax.random.uniform(keep_rng, (batch_size, num_modalities)), -1.0)
    keep = jax.nn.one_hot(jnp.argmax(draw, axis=1), num_modalities, dtype=bool) & available
  return jnp.where(present.any(axis=1, keepdims=True), present, keep)


def make_train_step(model, tx: optax.GradientTransformation, axis_name: str | None,
                    modality_dropout: float = 0.0, objectives: Any = None,
                    frozen_labels: Any = None):
  """(state, batch) -> (state, metrics). Under pmap (`axis_name` set) gradients, metrics and
  BatchNorm statistics are averaged over devices; under jit XLA reduces the global batch.

  objectives: `config.objectives` (None: classification only); the loss is their weighted
  sum, and each one's loss is logged as `loss_<objective>`.
  modality_dropout: probability of hiding each modality of each training example from the
  fusion (through the model's `present` mask), so the model learns to cope without it.
  frozen_labels: 'frozen' / 'trainable' per parameter (transfer.frozen_labels), so that the
  logged grad_norm is that of the gradients that are applied.
  """

  def train_step(state: TrainState, batch: dict[str, jax.Array]):
    rng = jax.random.fold_in(state.rng, state.step)
    rng = jax.random.fold_in(rng, parallel.device_index(axis_name))
    present = None
    if modality_dropout > 0:
      rng, mask_rng = jax.random.split(rng)
      present = modality_dropout_mask(mask_rng, batch['label'].shape[0], len(model.modalities),
                                      modality_dropout,
                                      encoders_lib.presence(batch, model.modalities))

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
      if 'logit_bias' in out:  # the sigmoid contrastive loss
        aux['logit_bias'] = out['logit_bias']
      if 'discriminator' in out:  # how often it tells real (logit > 0) from generated
        d = out['discriminator']
        aux['discriminator_accuracy'] = 0.5 * ((d['real'] > 0).mean() + (d['fake'] < 0).mean())
      return objectives_lib.total(objectives, means), (updates.get('batch_stats', {}), aux)

    (loss, (batch_stats, aux)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
    grads = parallel.pmean_if(grads, axis_name)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new_state = state.replace(step=state.step + 1, params=params, batch_stats=batch_stats,
                              opt_state=opt_state)
    if frozen_labels is not None:
      grads = jax.tree.map(lambda g, label: g if label == 'trainable' else jnp.zeros_like(g),
                           grads, frozen_labels)
    metrics = {'loss': loss, **aux, 'grad_norm': optax.tree.norm(grads)}
    return new_state, parallel.pmean_if(metrics, axis_name)

  return train_step


# ----------------------------------------------------------------------------- data


def _data():
  from crossmodal.data import datasets  # pylint: disable=g-import-not-at-top
  from crossmodal.data import input_pipeline  # pylint: disable=g-import-not-at-top
  return datasets, input_pipeline


def make_batches(config: Any, source: Any, training: bool, start_index: int = 0):
  """This process's batches of `source` (an `input_pipeline.Pipeline`; call `.close()`).

  training: shuffled, repeated forever, starting after `start_index` consumed batches.
  Otherwise (evaluation, whatever the split): one ordered pass, the final batch padded (with
  `mask`) so that every process runs the same number of eval steps.
  """
  _, input_pipeline = _data()
  return input_pipeline.make_pipeline(
      source,
      global_batch_size=(config.data.global_batch_size if training
                         else config.data.eval_batch_size),
      seed=config.seed, shuffle=training, drop_remainder=training,
      process_index=jax.process_index(), process_count=jax.process_count(),
      num_epochs=None if training else 1, start_index=start_index,
      worker_count=config.data.get('worker_count', 0))


# ----------------------------------------------------------------------------- the run


def check_config(config: Any) -> list[tuple[str, Any, int]]:
  """Raises ConfigError naming the bad option if the config cannot run; returns the built
  evaluators [(name, evaluator, every)] of `config.evaluators`.

  Runs before any data is read or prepared and before anything is compiled, so a wrong
  fusion switch costs a second, not a one-minute dataset build. The class count is not known
  yet (it comes from the prepared dataset), so the model is checked with a placeholder.
  """
  config_utils.validate(config, jax.device_count(), jax.process_count())
  datasets, _ = _data()
  try:
    available = datasets.check_config(config.data)
    missing = [m for m in config.model.modalities if m not in available]
    if missing:
      raise ValueError(f'config.model.modalities={list(config.model.modalities)}: dataset '
                       f'{config.data.name!r} has no {missing}; it has {list(available)}')
    model = build_model(config, num_classes=2, axis_name=None)
  except (ValueError, TypeError) as e:
    if isinstance(e, config_utils.ConfigError):
      raise
    raise config_utils.ConfigError(str(e)) from e
  transfer.check_config(config.get('init_from', {}), config.train.frozen)
  if ('adversarial' in objectives_lib.active(config.get('objectives'))
      and config.optim.accum_steps > 1):
    raise config_utils.ConfigError(
        f'config.optim.accum_steps={config.optim.accum_steps}: the adversarial objective '
        'updates its discriminator every step, so gradient accumulation would train the two '
        'players on different batches; use accum_steps=1 with a larger batch')
  _check_generation(config, available)
  built = evaluators_lib.build_all(config.get('evaluators'), model, config.get('objectives'),
                                   config.data)
  if config.train.best_metric:
    evaluators_lib.best_metric(config.train.best_metric, built)
  return built


def _check_generation(config: Any, available: Any) -> None:
  """The text decoder fits the model and the data: its heads divide the width, and a target
  read from the batch's text exists and is as long as the decoder's positions."""
  if 'generation' not in objectives_lib.active(config.get('objectives')):
    return
  g, where = config.objectives.generation, 'config.objectives.generation'
  if config.model.dim % g.heads:
    raise config_utils.ConfigError(f'{where}.heads={g.heads} does not divide '
                                   f'config.model.dim={config.model.dim}')
  if g.class_texts:
    return
  if 'text' not in available:
    raise config_utils.ConfigError(
        f'{where}: the target is the batch text, but dataset {config.data.name!r} has none '
        f'(it has {list(available)}); set {where}.class_texts to one text per class')
  datasets, _ = _data()
  length = None  # the token length of the batch's text
  if config.data.name in ('emoji', 'manifest'):
    length = datasets.option(config.data, 'text_length')
  elif config.data.name == 'synthetic' and config.data.get('synthetic'):
    length = config.data.synthetic.get('text_length')
  if length and length != g.max_len:
    raise config_utils.ConfigError(
        f'{where}.max_len={g.max_len} differs from config.data.text_length={length}: the '
        'decoder would be trained on fewer positions than it decodes, or could not read the '
        'whole target; make them equal')


def _check_unlabelled(config: Any) -> None:
  """Data without labels trains only objectives that read none."""
  weights = objectives_lib.weights(config.get('objectives'))
  needs = [f'config.objectives.{n}' for n in ('classification', 'aux_classification')
           if weights.get(n)]
  contrastive = (config.get('objectives') or {}).get('contrastive') or {}
  if weights.get('contrastive') and contrastive.get('same_class_positives'):
    needs.append('config.objectives.contrastive.same_class_positives')
  if needs:
    raise config_utils.ConfigError(
        f'config.data: the dataset has no labels (a manifest without a label column), but '
        f'{", ".join(needs)} train on them; add a label column, or train without them '
        '(experiments/manifest.py:task=contrastive)')


class _Run:
  """Builds everything a run needs once (config already checked); shared by training and
  checkpoint evaluation. Evaluators get predict functions and batches from here, never it."""

  def __init__(self, config: Any):
    self.config = config
    self._sources: dict[str, Any] = {}
    datasets, _ = _data()
    # Opening a split first prepares the dataset if needed (AV-MNIST: a one-time build).
    self.source('validation')
    self.num_classes = int(datasets.dataset_info(config.data).num_classes)
    if not self.num_classes:  # an unlabelled manifest
      _check_unlabelled(config)
      self.num_classes = 1  # the fusion's head, untrained (no objective reads it)
    self.strategy = parallel.make_parallel(
        config.train.parallel, parallel.make_mesh(mesh=config.train.mesh),
        config.train.fsdp_min_size)
    self.model = build_model(config, self.num_classes, self.strategy.axis_name)
    self.frozen, self.frozen_labels = tuple(config.train.frozen), None
    self.tx = optim.make_optimizer(config.optim, config.train.num_steps)
    if 'adversarial' in objectives_lib.active(config.get('objectives')):
      self.tx = optim.with_discriminator(self.tx, config.objectives.adversarial)
    if self.frozen:  # locked parameters; locked encoders run in inference mode (transfer.py)
      abstract = self.initial_state(abstract=True, tx=optax.identity())
      params = abstract.params
      transfer.check_frozen(params, abstract.batch_stats, self.frozen)
      self.frozen_labels = transfer.frozen_labels(params, self.frozen)
      self.model = self.model.clone(frozen_encoders=transfer.frozen_encoders(params,
                                                                             self.frozen))
      self.tx = transfer.lock(self.tx, params, self.frozen)
    self.sync = parallel.resolve_sync_every_step(config.train.sync_every_step)
    self.objectives = config.get('objectives')
    eval_model = build_model(config, self.num_classes, axis_name=None)
    self.evaluators = evaluators_lib.build_all(config.get('evaluators'), eval_model,
                                               self.objectives, config.data)
    self.engine = evaluators_lib.Engine(
        self.model, eval_model, self.strategy,
        lambda state: _variables(state.params, state.batch_stats), self.sync)

  def source(self, split: str) -> Any:
    if split not in self._sources:
      datasets, _ = _data()
      self._sources[split] = datasets.get_source(self.config.data, split)
    return self._sources[split]

  def batches(self, split: str, training: bool = False, start_index: int = 0):
    return make_batches(self.config, self.source(split), training, start_index)

  def initial_state(self, abstract: bool = False, tx: Any = None) -> Any:
    """The state a fresh run starts from, as global arrays in the strategy's state layout
    (replicated, or sharded over 'fsdp'; checkpoints keep it): initialised from the seed,
    then `config.init_from` applied (transfer.py).

    abstract=True: only shapes, dtypes and shardings (a restore target; nothing compiled).
    """
    pipeline = self.batches('validation')
    try:
      sample = next(pipeline)  # fixes input shapes only
    finally:
      pipeline.close()
    tx = tx or self.tx
    init = make_init_fn(self.model, tx, sample)
    rng = jax.random.PRNGKey(self.config.seed)
    shapes = jax.eval_shape(init, rng)
    sharding = self.strategy.state_sharding(shapes)
    if abstract:
      return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s),
                          shapes, sharding)
    state = jax.jit(init, out_shardings=sharding)(rng)
    if not self.config.get('init_from'):
      return state
    params, batch_stats, done = transfer.apply(self.config.init_from, state.params,
                                               state.batch_stats, self.strategy.replicated)
    for line in done:
      logging.info('%s', line)
    return self.strategy.put_state(state.replace(
        params=params, batch_stats=batch_stats, opt_state=jax.jit(tx.init)(params)))

  def evaluate(self, device_state: Any, step: int, writer: metrics_lib.MetricWriter | None,
               workdir: str, prefix: str = '',
               due: Callable[[int], bool] = lambda every: True) -> dict[str, dict[str, Any]]:
    """Runs the evaluators for which `due(every)` holds on `device_state` (the training
    layout), writing each one's record as split `<prefix><name>` (unless `writer` is None);
    {name: summary}."""
    predict = self.engine.bind(device_state)
    results = {}
    for name, evaluator, every in self.evaluators:
      if not due(every):
        continue
      batches = evaluators_lib.passes(self.batches, evaluator.split)
      results[name] = evaluator.run(predict, batches, workdir)
      if writer is not None:
        writer.write(step, prefix + name, results[name])
    return results


def make_checkpointer(config: Any, workdir: str, evaluators: list | None = None
                      ) -> checkpointing.Checkpointer:
  """Keeps the last K checkpoints and, with `train.best_metric`, the best by that metric
  (its direction declared by its evaluator; `evaluators` as check_config returns them)."""
  best, mode = config.train.best_metric, 'max'
  if best:
    mode = evaluators_lib.best_metric(best, evaluators or check_config(config))[1]
  return checkpointing.Checkpointer(
      os.path.join(workdir, CHECKPOINT_DIR), max_to_keep=config.train.keep_checkpoints,
      keep_best=bool(best), best_metric=best or 'none', best_mode=mode,
      async_save=config.train.async_checkpoints)


def _flat(results: dict[str, dict[str, Any]]) -> dict[str, float]:
  """{'validation': {'accuracy': .9}} -> {'validation/accuracy': .9} (scalars only)."""
  return {f'{name}/{k}': v for name, m in results.items() for k, v in m.items()
          if isinstance(v, (int, float))}


def train_and_evaluate(config: Any, workdir: str, *, final_checkpoint: str | int | None = 'best',
                       after_step: Callable[[int], None] | None = None) -> RunResult:
  """Trains `config` in `workdir` (resuming the latest checkpoint there), running the
  in-loop evaluators as it goes, then every evaluator on `final_checkpoint` ('best',
  'latest', a step, or None for none).

  Raises config_utils.ConfigError before building anything if the config is invalid,
  checkpointing.WorkdirLockedError if another run holds the workdir, and
  NonFiniteLossError if the loss becomes NaN/Inf. after_step(step) is called after each step
  has been saved as due (tests use it to interrupt a run at an exact step).
  """
  checked = check_config(config)
  if config.get('init_from') and not (epath.Path(workdir) / CHECKPOINT_DIR).exists():
    transfer.check_sources(config.init_from)  # a fresh start reads them
  _data()[0].check_available(config.data)  # before TFDS would retry a download for minutes
  with checkpointing.WorkdirLock(workdir):
    run = _Run(config)
    ckpt = make_checkpointer(config, workdir, checked)
    writer = metrics_lib.MetricWriter(workdir, enabled=jax.process_index() == 0)
    try:
      result = _train(run, ckpt, writer, workdir, after_step)
      if final_checkpoint is not None and not result.preempted:
        state, meta = _restore(run, ckpt, final_checkpoint)
        result.final = run.evaluate(run.strategy.put_state(state), int(meta['step']), writer,
                                    workdir, prefix='eval_')
      return result
    finally:
      ckpt.close()
      writer.close()


def _train(run: _Run, ckpt: checkpointing.Checkpointer, writer: metrics_lib.MetricWriter,
           workdir: str, after_step: Callable[[int], None] | None) -> RunResult:
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
    run_info.write(workdir, state.params, tc.parallel, frozen=run.frozen,
                   trunks=run.model.trunks(),
                   data={'name': config.data.name,
                         'fingerprint': _data()[0].fingerprint(config.data)})
  device_state = strategy.put_state(state)
  del state

  train_step = strategy.train_step(make_train_step(run.model, run.tx, strategy.axis_name,
                                                   tc.modality_dropout, run.objectives,
                                                   run.frozen_labels), device_state)
  batches = run.batches('train', training=True, start_index=position)
  throughput = metrics_lib.Throughput(config.data.global_batch_size, start_step)
  pending: list[Any] = []  # per-step device metrics not yet fetched
  fetched: list[dict[str, np.ndarray]] = []  # fetched since the last log
  eval_metrics: dict[str, dict[str, Any]] = {}
  preemption = checkpointing.install_preemption_handler()
  in_loop = [every for _, _, every in run.evaluators if every]

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
      due = lambda every, step=step, last=last: bool(every) and (step % every == 0 or last)
      do_log = step % tc.log_every == 0 or last
      do_eval = any(due(every) for every in in_loop)
      do_save = (tc.checkpoint_every and step % tc.checkpoint_every == 0) or do_eval or last
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
        eval_metrics = run.evaluate(device_state, step, writer, workdir, due=due)
        throughput.reset(step)  # evaluation time is not training throughput
      if do_save or stop:
        ckpt.save(step, strategy.global_state(device_state), pipeline_position=batches.position,
                  metrics=_flat(eval_metrics) if do_eval else None, force=stop)
      if after_step is not None:
        after_step(step)
      if stop:
        logging.warning('preemption requested: saved step %d, exiting', step)
        break
    if step == start_step and start_step >= tc.num_steps:
      logging.info('workdir already trained to step %d; evaluating only', start_step)
      eval_metrics = run.evaluate(device_state, step, None, workdir,
                                  due=lambda every: bool(every))
    ckpt.wait_until_finished()
  finally:
    preemption.close()
    batches.close()
  return RunResult(step=step, state=strategy.global_state(device_state), metrics=eval_metrics,
                   preempted=stop)


def _restore(run: _Run, ckpt: checkpointing.Checkpointer, checkpoint: str | int):
  """(state, meta) of checkpoint 'latest', 'best' (the latest when no best is kept) or a
  step number."""
  target = run.initial_state(abstract=True)
  if checkpoint == 'best' and ckpt.keep_best:
    state, _, meta = ckpt.restore(target, best=True)
  elif checkpoint in ('best', 'latest'):
    state, _, meta = ckpt.restore(target)
  else:
    state, _, meta = ckpt.restore(target, step=int(checkpoint))
  return state, meta


def restore_state(config: Any, workdir: str, checkpoint: str | int = 'latest'):
  """(run, state, meta) of a checkpoint in `workdir`: 'latest', 'best' or a step number."""
  checked = check_config(config)
  _data()[0].check_available(config.data)
  run = _Run(config)
  ckpt = make_checkpointer(config, workdir, checked)
  try:
    state, meta = _restore(run, ckpt, checkpoint)
  finally:
    ckpt.close()
  return run, state, meta


def evaluate(config: Any, workdir: str, checkpoint: str | int = 'latest') -> dict[str, Any]:
  """Runs every evaluator of `config.evaluators` on a checkpoint of `workdir`, writing the
  results to metrics.jsonl/TensorBoard as splits 'eval_<name>'; returns {name: summary}."""
  run, state, meta = restore_state(config, workdir, checkpoint)
  writer = metrics_lib.MetricWriter(workdir, enabled=jax.process_index() == 0)
  try:
    return run.evaluate(run.strategy.put_state(state), int(meta['step']), writer, workdir,
                        prefix='eval_')
  finally:
    writer.close()
