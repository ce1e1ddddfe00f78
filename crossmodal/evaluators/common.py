"""What every evaluator shares: the base class, the predict functions it is given, helpers.

An evaluator never sees the training loop. It is built from its options (the keyword
arguments of its `__init__`, which are its schema) and from the model and objectives it checks
itself against; `run(predict, batches, workdir)` then gets
  predict   a `Predict`: compiled forward passes of one trained state that return only what
            the evaluator's `select(outputs)` picks (`over` a whole split, or one batch; an
            `apply(model, variables, batch, present)` replaces the model's own forward pass,
            e.g. to decode text inside the same jit),
            plus on-device sums (`sums`) for evaluators that only count
  batches   a callable that opens one ordered pass over the evaluator's split, or over
            `batches(split)` another one (this process's share, the last batch padded and
            marked by `mask`)
  workdir   where pictures go (`<workdir>/eval/`)
and returns {metric: value}; `metrics()` declares its scalars and which way is better.
"""
from __future__ import annotations

import contextlib
import copy
import io
import os
from typing import Any, Callable, Iterable, Iterator, Mapping, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from crossmodal import files
from crossmodal import parallel
from crossmodal import schema

EVAL_DIR = 'eval'
SPLITS = ('validation', 'test', 'train')
MAX, MIN = 'max', 'min'
# Options of every evaluator, read by the loop rather than the evaluator: which evaluator
# class (`type`, default: the entry's name) and how often it runs in the training loop
# (`every` steps and at the last one; 0 = only on the checkpoint evaluated after training).
COMMON_OPTIONS = {'type': '', 'every': 0}
# Arguments of __init__ that come from the run, not from config.evaluators.<name>.
_FROM_RUN = ('self', 'model', 'objectives', 'data')


class Evaluator:
  """Base class. Subclasses add keyword options to `__init__` and check them there."""
  # Regexes (re.search) of the reported scalars that results tables show (crossmodal/ablate.py
  # prefixes them with the entry's name); may include reference values such as chance levels.
  HEADLINES: tuple[str, ...] = ()

  def __init__(self, model: Any, objectives: Any = None, data: Any = None, *,
               split: str = 'test'):
    self.model, self.objectives, self.data = model, objectives, data
    self.split = split

  @classmethod
  def options(cls) -> dict[str, Any]:
    """The evaluator's options and their defaults: its schema."""
    return schema.defaults_of(cls.__init__, skip=_FROM_RUN)

  @property
  def modalities(self) -> tuple[str, ...]:
    return tuple(self.model.modalities)

  @staticmethod
  def fail(why: str, option: str | None = None) -> None:
    """Raises an error that `build` reports as `config.evaluators.<name>[.option]: why`."""
    raise _OptionError(option, why)

  def metrics(self) -> dict[str, str]:
    """{scalar name: 'max' or 'min' (which way is better)} that `run` reports."""
    raise NotImplementedError

  def run(self, predict: 'Predict', batches: Callable[[], Iterable[dict]],
          workdir: str) -> dict[str, Any]:
    raise NotImplementedError


def build(name: str, options: Any, registry: Mapping[str, type[Evaluator]], model: Any,
          objectives: Any = None, data: Any = None) -> tuple[Evaluator, int]:
  """(evaluator, every) for `config.evaluators.<name>`; ConfigError naming a bad option."""
  where = f'config.evaluators.{name}'
  if name == 'train' or name.startswith('eval_'):  # the loop's own record names
    raise schema.ConfigError(f'{where}: the name is taken by the training log (train) or the '
                             'final records (eval_<name>); rename the entry')
  values = schema.as_dict(options)
  kind = values.get('type') or name
  if kind not in registry:
    raise schema.ConfigError(f'{where}.type={kind!r}: unknown evaluator; valid choices: '
                             f'{sorted(registry)}')
  cls = registry[kind]
  values = schema.check(
      where, values, {**COMMON_OPTIONS, **cls.options()},
      choices={'split': SPLITS} if 'split' in cls.options() else None,
      rules={'every': (lambda v: v >= 0, 'must be an int >= 0 (0 = only on the checkpoint '
                                         'evaluated after training)')})
  every = values.pop('every')
  del values['type']
  try:
    evaluator = cls(model, objectives, data, **values)
  except _OptionError as e:
    raise schema.ConfigError(f'{where}{"." + e.option if e.option else ""}: {e.why}') from None
  except (ValueError, TypeError) as e:  # e.g. a dataset that cannot serve the evaluator
    raise schema.ConfigError(f'{where}: {e}') from e
  return evaluator, every


class _OptionError(Exception):
  def __init__(self, option: str | None, why: str):
    super().__init__(why)
    self.option, self.why = option, why


def evaluator_config(kind: str, registry: Mapping[str, type[Evaluator]], **overrides: Any
                     ) -> dict[str, Any]:
  """Defaults of evaluator type `kind` with `overrides` (every option, so overrides work)."""
  if kind not in registry:
    raise schema.ConfigError(f'unknown evaluator {kind!r}; valid choices: {sorted(registry)}')
  defaults = copy.deepcopy({**COMMON_OPTIONS, 'type': kind, **registry[kind].options()})
  schema.check(f'evaluator_config({kind!r})', overrides, defaults)
  return {**defaults, **overrides}


# ----------------------------------------------------------------------------- predicting


class Engine:
  """Compiles and caches the forward passes evaluators ask for, once per run.

  `outputs` passes run jitted over the run's mesh on the state as replicated global arrays,
  whatever `train.parallel` is, and return replicated results: every process fetches the
  global batch, so multi-host evaluation sees every example once. `sums` passes run under
  the training strategy (jit or pmap) on the training layout of the state, so in-loop
  counts cost no state copy.
  """

  def __init__(self, model, eval_model, strategy, variables_fn: Callable[[Any], Any],
               sync: bool = False):
    self.model, self.eval_model, self.strategy = model, eval_model, strategy
    self.variables = variables_fn
    self.sync = sync
    mesh = getattr(strategy, 'mesh', None)
    self.jit = strategy if strategy.name == 'jit' else parallel.JitParallel(mesh)
    self._forward: dict[tuple, Callable] = {}
    self._sum: dict[Callable, Callable] = {}

  def forward(self, select: Callable, keep: Sequence[str], attention: bool,
              apply: Callable | None = None) -> Callable:
    """jit(state, batch, present) -> {**select(outputs), 'label', 'mask', **batch[keep]};
    outputs = apply(model, variables, batch, present) if given, else the model's."""
    key = (select, tuple(keep), attention, apply)
    if key not in self._forward:
      model, variables = self.eval_model, self.variables

      def forward(state, batch, present):
        if apply is not None:
          out = apply(model, variables(state), batch, present)
        else:
          out = model.apply(variables(state), batch, present=present, train=False,
                            return_attention=attention)
        return {**select(out), **{k: batch[k] for k in ('label', 'mask', *keep)}}
      s = self.jit
      self._forward[key] = jax.jit(  # the state in its own layout (replicated or fsdp)
          forward, in_shardings=(None, s.batch_sharding, s.batch_sharding),
          out_shardings=s.replicated)
    return self._forward[key]

  def sum_step(self, select: Callable) -> Callable:
    """strategy step (state, batch, acc) -> acc + select(outputs, batch, axis_name), summed
    over devices."""
    if select not in self._sum:
      model, variables, axis = self.model, self.variables, self.strategy.axis_name

      def step(state, batch, acc):
        out = model.apply(variables(state), batch, train=False)
        update = parallel.psum_if(select(out, batch, axis), axis)
        return jax.tree.map(jnp.add, acc, update)
      self._sum[select] = self.strategy.eval_step(step)
    return self._sum[select]

  def bind(self, device_state: Any) -> 'Predict':
    return Predict(self, device_state)


class Predict:
  """The predict functions of one state (the training layout of `train.parallel`)."""

  def __init__(self, engine: Engine, device_state: Any):
    self._engine, self._device_state = engine, device_state
    self._global_state = None

  @property
  def global_state(self) -> Any:
    if self._global_state is None:
      self._global_state = self._engine.strategy.global_state(self._device_state)
    return self._global_state

  def __call__(self, select: Callable[[dict], dict], batch: Mapping[str, np.ndarray],
               present: np.ndarray | None = None, keep: Sequence[str] = (),
               attention: bool = False, apply: Callable | None = None
               ) -> dict[str, np.ndarray]:
    """select(outputs) of one host batch (with `mask`), as host arrays of the global batch."""
    engine = self._engine
    forward = engine.forward(select, keep, attention, apply)
    size = len(batch['label'])
    if present is None:
      present = np.ones((size, len(engine.eval_model.modalities)), bool)
    put = engine.jit.put_batch
    out = forward(self.global_state, put(dict(batch)), put({'p': present})['p'])
    return {k: np.asarray(engine.jit.fetch(v)) for k, v in out.items()}

  def over(self, select: Callable[[dict], dict], batches: Iterable[dict], *,
           keep: Sequence[str] = (), attention: bool = False,
           transform: Callable[[dict, int], dict] | None = None,
           present_fn: Callable[[int], np.ndarray] | None = None,
           max_examples: int = 0, apply: Callable | None = None) -> dict[str, np.ndarray]:
    """`select(outputs)` of every real example of `batches`, with `label` and the batch keys
    in `keep`, concatenated in dataset order. transform(batch, batch_index) edits host
    batches (noise); present_fn(batch_size) gives the modality mask."""
    collected: dict[str, list[np.ndarray]] = {}
    seen = 0
    with _closing(batches):
      for i, batch in enumerate(batches):
        if max_examples and seen >= max_examples:
          break
        batch = {'mask': np.ones(len(batch['label']), bool), **batch}
        if transform is not None:
          batch = transform(batch, i)
        present = None if present_fn is None else present_fn(len(batch['label']))
        got = self(select, batch, present, keep, attention, apply)
        mask = got.pop('mask').astype(bool)
        for key, value in got.items():
          collected.setdefault(key, []).append(value[mask])
        seen += int(mask.sum())
    result = {k: np.concatenate(v) for k, v in collected.items()}
    if max_examples:
      result = {k: v[:max_examples] for k, v in result.items()}
    return result

  def sums(self, select: Callable[[dict, dict, str | None], Any], batches: Iterable[dict],
           zeros: Any, max_batches: int = 0) -> Any:
    """Host copy of `zeros + sum over batches of select(outputs, batch, axis_name)`, summed
    on device (select sees this device's share of each batch, so it must skip examples
    whose `batch['mask']` is False itself)."""
    engine = self._engine
    step = engine.sum_step(select)
    acc = engine.strategy.put_accumulator(zeros)
    with _closing(batches):
      for i, batch in enumerate(batches):
        if max_batches and i >= max_batches:
          break
        acc = step(self._device_state, engine.strategy.put_batch(batch), acc)
        if engine.sync:
          jax.block_until_ready(acc)
    return engine.strategy.fetch(acc)


def _closing(batches: Iterable[dict]):
  """Closes a pass left early (a limit, an error) now rather than when it is collected."""
  return contextlib.closing(batches) if hasattr(batches, 'close') else contextlib.nullcontext()


def passes(open_pipeline: Callable[[str], Any], split: str
           ) -> Callable[..., Iterator[dict]]:
  """batches(split=None) for an evaluator: each call is one ordered pass over a freshly opened
  pipeline of `split` (default: the evaluator's own, e.g. a linear probe also reads 'train'),
  closed when the pass ends or is abandoned."""
  default = split

  def batches(split: str | None = None) -> Iterator[dict]:
    pipeline = open_pipeline(split or default)
    try:
      yield from pipeline
    finally:
      pipeline.close()
  return batches


# ----------------------------------------------------------------------------- helpers


def unit(x: np.ndarray) -> np.ndarray:
  """Rows scaled to unit L2 norm (cosine similarity is then a dot product)."""
  return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def save_figure(fig, workdir: str, name: str) -> str:
  """Writes the picture from process 0 only (every process computed the same one)."""
  path = os.path.join(workdir, EVAL_DIR, name)
  if jax.process_index() == 0:
    buffer = io.BytesIO()
    fig.savefig(buffer, format='png', dpi=120, bbox_inches='tight')
    files.write_file(path, buffer.getvalue())
  pyplot().close(fig)
  return path


def embedding_fusion_check(evaluator: Evaluator, modalities: Sequence[str]) -> None:
  """The pooled vectors an embedding evaluator compares exist: under an attention fusion
  conv encoders stop at their token stage unless an embedding objective asks for them."""
  from crossmodal.models import fusion as fusion_lib  # pylint: disable=g-import-not-at-top
  model = evaluator.model
  if fusion_lib.uses_tokens(model.fusion.type) and not model.pooled:
    Evaluator.fail(f'under fusion={model.fusion.type!r} the encoders compute no pooled vector '
                   f'for {list(modalities)} unless an embedding objective (contrastive, '
                   'reconstruction or aux_classification in config.objectives) trains one')
