"""Config validation, preset-argument parsing and config files in the workdir.

`validate(config)` runs before anything is built (no model, no data, no compile), so a typo
or an out-of-range value costs a second, not a compile. Every message names the option as it
is written on the command line (`config.optim.name`) and lists the valid choices.
"""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import math
import os
import sys
import types
from typing import Any, Iterable, Mapping

from etils import epath
import ml_collections

from crossmodal import files
from crossmodal import schema

OPTIMIZERS = ('adamw', 'sgd', 'rmsprop')
SCHEDULES = ('cosine', 'constant')
PARALLEL_MODES = ('jit', 'pmap')
SYNC_CHOICES = ('auto', 'on', 'off')
DTYPES = ('float32', 'bfloat16')
MODALITIES = ('image', 'audio', 'text')
OBJECTIVES = ('classification', 'aux_classification', 'contrastive', 'reconstruction')
CONTRASTIVE_LOSSES = ('infonce', 'triplet')


ConfigError = schema.ConfigError


def parse_arg(arg: str | None, **defaults: Any) -> ml_collections.ConfigDict:
  """Parses a preset string 'fusion=crossattn,image=lenet' against typed defaults.

  Each value is converted to the type of its default (bool accepts true/false/1/0, tuples are
  '+'-separated: 'modalities=image+audio'). Unknown keys and unconvertible values raise
  ConfigError listing the valid keys.
  """
  out = ml_collections.ConfigDict(dict(defaults))
  if not arg:
    return out
  for item in arg.split(','):
    item = item.strip()
    if not item:
      continue
    if '=' not in item:
      raise ConfigError(f'config argument {item!r} is not key=value; valid keys: '
                        f'{sorted(defaults)} (e.g. "{_example(defaults)}")')
    key, value = (s.strip() for s in item.split('=', 1))
    if key not in defaults:
      raise ConfigError(f'unknown config argument {key!r}; valid keys: {sorted(defaults)}')
    out[key] = _convert(key, value, defaults[key])
  return out


def _example(defaults: dict[str, Any]) -> str:
  return ','.join(f'{k}={_fmt(v)}' for k, v in list(defaults.items())[:2])


def _fmt(v: Any) -> str:
  return '+'.join(map(str, v)) if isinstance(v, tuple) else str(v)


def _convert(key: str, value: str, default: Any) -> Any:
  try:
    if isinstance(default, bool):
      if value.lower() in ('true', '1', 'yes'):
        return True
      if value.lower() in ('false', '0', 'no'):
        return False
      raise ValueError(value)
    if isinstance(default, int):
      return int(value)
    if isinstance(default, float):
      return float(value)
    if isinstance(default, tuple):
      return tuple(s for s in value.split('+') if s)
  except ValueError:
    raise ConfigError(f'config argument {key}={value!r}: expected {type(default).__name__} '
                      f'like {_fmt(default)!r}') from None
  return value


_MISSING = object()


class _Errors:
  """Collects every problem so the user sees them all at once."""

  def __init__(self, config: Any):
    self.config = config
    self.messages: list[str] = []

  def get(self, path: str) -> Any:
    node = self.config
    for part in path.split('.'):
      try:
        node = node[part]
      except (KeyError, AttributeError, TypeError):
        self.messages.append(f'config.{path} is missing')
        return _MISSING
    return node

  def check(self, path: str, ok, why: str, choices: Iterable[Any] | None = None) -> None:
    value = self.get(path)
    if value is _MISSING:
      return
    try:
      good = ok(value)
    except TypeError:
      good = False
    if not good:
      msg = f'config.{path}={value!r}: {why}'
      if choices is not None:
        msg += f'; valid choices: {tuple(choices)}'
      self.messages.append(msg)


def _number(v: Any) -> bool:
  return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def _int(v: Any) -> bool:
  return isinstance(v, int) and not isinstance(v, bool)


def validate(config: Any, device_count: int | None = None,
             process_count: int | None = None) -> None:
  """Raises ConfigError listing every invalid option of a resolved config.

  `device_count` / `process_count` (the global device and process counts; pass
  `jax.device_count()` / `jax.process_count()`) enable the batch divisibility checks.
  """
  e = _Errors(config)
  e.check('seed', lambda v: _int(v) and v >= 0, 'must be an int >= 0')

  # Data: batch sizes must split evenly over processes and devices.
  for key in ('global_batch_size', 'eval_batch_size'):
    e.check(f'data.{key}', lambda v: _int(v) and v > 0, 'must be a positive int')
    size = e.get(f'data.{key}')
    if _int(size) and size > 0:
      for n, what in ((device_count, 'device count'), (process_count, 'process count')):
        if n and size % n:
          e.messages.append(f'config.data.{key}={size} must be divisible by the {what} '
                            f'({n}); e.g. {max(n, size // n * n)}')

  data = e.get('data')
  if isinstance(data, (dict, ml_collections.ConfigDict)) and 'cache' in data:
    e.check('data.cache', lambda v: isinstance(v, bool), 'must be True or False')
    if data['cache'] is True and data.get('worker_count', 0):
      e.messages.append(f'config.data.cache=True with config.data.worker_count='
                        f'{data["worker_count"]}: every worker process would hold its own '
                        'copy of the dataset; use one of them')

  # Model (the model module checks its encoder/fusion sub-configs when it builds them).
  e.check('model.modalities',
          lambda v: len(v) > 0 and len(set(v)) == len(v) and set(v) <= set(MODALITIES),
          'must be a non-empty tuple of distinct modalities', MODALITIES)
  e.check('model.dim', lambda v: _int(v) and v > 0, 'must be a positive int')
  model = e.get('model')
  if isinstance(model, (dict, ml_collections.ConfigDict)) and 'dropout' in model:
    e.check('model.dropout', lambda v: _number(v) and 0 <= v < 1, 'must be in [0, 1)')

  # Optimizer.
  e.check('optim.name', lambda v: v in OPTIMIZERS, 'unknown optimizer', OPTIMIZERS)
  e.check('optim.schedule', lambda v: v in SCHEDULES, 'unknown schedule', SCHEDULES)
  e.check('optim.lr', lambda v: _number(v) and v > 0, 'must be a positive number')
  e.check('optim.warmup_steps', lambda v: _int(v) and v >= 0, 'must be an int >= 0')
  e.check('optim.end_lr_ratio', lambda v: _number(v) and 0 <= v <= 1, 'must be in [0, 1]')
  e.check('optim.weight_decay', lambda v: _number(v) and v >= 0, 'must be >= 0')
  e.check('optim.grad_clip', lambda v: _number(v) and v >= 0,
          'must be >= 0 (0 disables clipping)')
  e.check('optim.accum_steps', lambda v: _int(v) and v >= 1, 'must be an int >= 1')
  for key in ('momentum', 'b1', 'b2', 'rms_decay'):
    e.check(f'optim.{key}', lambda v: _number(v) and 0 <= v < 1, 'must be in [0, 1)')
  e.check('optim.eps', lambda v: _number(v) and v > 0, 'must be a positive number')

  _check_optimizer_fields_apply(e)

  # Training loop.
  e.check('train.num_steps', lambda v: _int(v) and v > 0, 'must be a positive int')
  e.check('train.log_every', lambda v: _int(v) and v > 0, 'must be a positive int')
  e.check('train.checkpoint_every', lambda v: _int(v) and v >= 0,
          'must be an int >= 0 (0 = checkpoint only at evaluations and the end)')
  e.check('train.keep_checkpoints', lambda v: _int(v) and v >= 1, 'must be an int >= 1')
  e.check('train.async_checkpoints', lambda v: isinstance(v, bool), 'must be True or False')
  e.check('train.parallel', lambda v: v in PARALLEL_MODES, 'unknown parallel mode',
          PARALLEL_MODES)
  e.check('train.sync_every_step', lambda v: v in SYNC_CHOICES, 'unknown setting',
          SYNC_CHOICES)
  e.check('train.dtype', lambda v: v in DTYPES, 'unsupported compute dtype', DTYPES)
  e.check('train.best_metric', lambda v: isinstance(v, str),
          "must be '<evaluator>/<metric>' (e.g. 'validation/accuracy') or '' for none")
  e.check('train.modality_dropout', lambda v: _number(v) and 0 <= v < 1,
          'must be in [0, 1) (probability of hiding each modality of a training example)')
  if isinstance(config, (dict, ml_collections.ConfigDict)) and 'objectives' in config:
    _check_objectives(e)
  accum = e.get('optim.accum_steps')
  steps = e.get('train.num_steps')
  if _int(accum) and _int(steps) and accum >= 1 and steps % accum:
    e.messages.append(f'config.train.num_steps={steps} must be a multiple of '
                      f'config.optim.accum_steps={accum} (every update sees a full set)')
  if e.messages:
    messages = list(dict.fromkeys(e.messages))
    raise ConfigError('invalid config:\n  ' + '\n  '.join(messages))


def _check_objectives(e: _Errors) -> None:
  objectives = e.get('objectives')
  unknown = sorted(set(objectives) - set(OBJECTIVES))
  if unknown:
    e.messages.append(f'config.objectives: unknown objective(s) {unknown}; valid: {OBJECTIVES}')
  for name in OBJECTIVES:
    e.check(f'objectives.{name}.weight', lambda v: _number(v) and v >= 0, 'must be >= 0')
  weights = [e.get(f'objectives.{name}.weight') for name in OBJECTIVES]
  if all(_number(w) for w in weights) and not any(w > 0 for w in weights):
    e.messages.append('config.objectives: every weight is 0, so nothing would be trained')
  e.check('objectives.contrastive.loss', lambda v: v in CONTRASTIVE_LOSSES, 'unknown loss',
          CONTRASTIVE_LOSSES)
  e.check('objectives.contrastive.pair', lambda v: len(v) == 2 and len(set(v)) == 2
          and set(v) <= set(MODALITIES), 'must be two different modalities', MODALITIES)
  e.check('objectives.contrastive.temperature', lambda v: _number(v) and v > 0,
          'must be a positive number')
  e.check('objectives.contrastive.margin', lambda v: _number(v) and v >= 0, 'must be >= 0')
  for key in ('learn_temperature', 'same_class_positives'):
    e.check(f'objectives.contrastive.{key}', lambda v: isinstance(v, bool),
            'must be True or False')
  for key in ('source', 'target'):
    e.check(f'objectives.reconstruction.{key}', lambda v: v in MODALITIES, 'unknown modality',
            MODALITIES)
  e.check('objectives.reconstruction.hidden',
          lambda v: all(_int(w) and w > 0 for w in v), 'must be a tuple of positive ints')


# Which optimizer fields each optimizer reads; a field another optimizer reads must keep its
# default, so that e.g. `optim.b2` set on an SGD run is an error instead of silently ignored.
OPTIMIZER_FIELDS = {'adamw': ('b1', 'b2', 'eps'), 'sgd': ('momentum',),
                    'rmsprop': ('momentum', 'eps', 'rms_decay')}


def _check_optimizer_fields_apply(e: _Errors) -> None:
  name = e.get('optim.name')
  if name not in OPTIMIZER_FIELDS:
    return
  defaults = optim_config()
  for key in sorted({k for ks in OPTIMIZER_FIELDS.values() for k in ks}):
    value = e.get(f'optim.{key}')
    if key not in OPTIMIZER_FIELDS[name] and value is not _MISSING and value != defaults[key]:
      users = [n for n, ks in OPTIMIZER_FIELDS.items() if key in ks]
      e.messages.append(f'config.optim.{key}={value!r} has no effect with '
                        f'config.optim.name={name!r} (used by {users}); leave it at '
                        f'{defaults[key]!r} or choose one of those optimizers')
  if e.get('optim.schedule') == 'constant' and e.get('optim.end_lr_ratio') not in (
      _MISSING, defaults.end_lr_ratio):
    e.messages.append("config.optim.end_lr_ratio applies to schedule='cosine' only")


def load_module(path: str, name: str, register: bool = False) -> types.ModuleType:
  """Runs the Python file `path` as a module named `name` (config, sweep and script files,
  which are not importable packages). `register` puts it in sys.modules first, which
  dataclasses defined in the file need."""
  spec = importlib.util.spec_from_file_location(name, path)
  module = importlib.util.module_from_spec(spec)
  if register:
    sys.modules[name] = module
  spec.loader.exec_module(module)
  return module


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """get_config(arg) of a config file given as `path[:arg]`, as --config loads it."""
  path, _, arg = spec.partition(':')
  module = load_module(path, '_crossmodal_config')
  return module.get_config(arg) if arg else module.get_config()


def dataclass_from_config(cls: type, cfg: Any, what: str) -> Any:
  """`cls(**cfg)` for a dataclass from a ConfigDict / dict / instance, naming unknown keys (a
  typo in an override must fail, not fall back to a default)."""
  if isinstance(cfg, cls):
    return cfg
  values = cfg.to_dict() if isinstance(cfg, ml_collections.ConfigDict) else dict(cfg)
  valid = [f.name for f in dataclasses.fields(cls)]
  unknown = sorted(set(values) - set(valid))
  if unknown:
    raise ValueError(f'{what}: unknown option(s) {unknown}; valid options: {", ".join(valid)}')
  return cls(**values)


def to_dict(config: Any) -> dict[str, Any]:
  """Plain-JSON dict of a ConfigDict (tuples become lists)."""
  return json.loads(config.to_json_best_effort(sort_keys=True))


def write_config(config: Any, workdir: str) -> str:
  """Writes the resolved config to `<workdir>/config.json` and returns the path."""
  epath.Path(workdir).mkdir(parents=True, exist_ok=True)
  path = os.path.join(workdir, 'config.json')
  files.write_file(path, json.dumps(to_dict(config), indent=2, sort_keys=True) + '\n')
  return path


_ABSENT = '<absent>'  # compared by identity: a recorded '<absent>' string is a value


def _leaf_diffs(old: Mapping[str, Any], new: Mapping[str, Any], prefix: str = ''
                ) -> list[tuple[str, Any, Any]]:
  """(dotted key, old value, new value) for every leaf where two `to_dict` configs differ."""
  out = []
  for key in sorted(set(old) | set(new)):
    a, b = old.get(key, _ABSENT), new.get(key, _ABSENT)
    if isinstance(a, Mapping) and isinstance(b, Mapping):
      out += _leaf_diffs(a, b, f'{prefix}{key}.')
    elif a != b:
      out.append((f'{prefix}{key}', a, b))
  return out


# Fields that say where or how a run executes, not what it computes (paths, input workers,
# jit vs pmap, checkpoint and logging cadence, evaluators, which read the state and never
# change it): a run may resume with other values.
NOT_THE_EXPERIMENT = ('data.data_dir', 'data.manual_dir', 'data.worker_count', 'data.cache',
                      'train.parallel', 'train.async_checkpoints', 'train.sync_every_step',
                      'train.log_every', 'train.checkpoint_every', 'train.keep_checkpoints',
                      'evaluators')


def experiment_changes(recorded: Mapping[str, Any], config: Any) -> list[str]:
  """What makes `config` another experiment than the `recorded` config.json, as 'dotted.key:
  old -> new' per differing leaf; NOT_THE_EXPERIMENT and fields the recorded config predates
  (added to the code since, at their defaults unless set) do not count."""
  new = config if isinstance(config, Mapping) else to_dict(config)
  recorded = _upgrade(recorded)
  how = lambda key: any(key == k or key.startswith(k + '.') for k in NOT_THE_EXPERIMENT)
  return [f'{key}: {json.dumps(a)} -> {json.dumps(b)}'
          for key, a, b in _leaf_diffs(recorded, new) if not how(key) and a is not _ABSENT]


def _upgrade(recorded: Mapping[str, Any]) -> dict[str, Any]:
  """A config.json written before the evaluators took over in-loop evaluation (2026-12),
  in today's terms: `train.eval_every`, `eval_splits` and `max_eval_batches` became options
  of config.evaluators, and `train.best_metric` names its evaluator ('accuracy' was the
  validation split's)."""
  train = dict(recorded.get('train', {}))
  if 'eval_splits' not in train:
    return dict(recorded)
  for key in ('eval_every', 'eval_splits', 'max_eval_batches'):
    train.pop(key, None)
  if train.get('best_metric') and '/' not in train['best_metric']:
    train['best_metric'] = f'validation/{train["best_metric"]}'
  return {**recorded, 'train': train}


def check_same_config(config: Any, workdir: str) -> None:
  """Refuses to resume `workdir` with another experiment than the one its run was started
  with (`config.json`): continuing would mix two experiments in one set of checkpoints and
  metrics."""
  path = epath.Path(workdir) / 'config.json'
  if not path.exists():
    return
  diff = experiment_changes(json.loads(path.read_text()), config)
  if diff:
    raise ConfigError(
        f'{workdir} holds a run of another config; this config differs in: '
        f'{"; ".join(diff)}. Use a new --workdir (or rename {path} to resume anyway; the run '
        'then records the new config).')


def check_overrides(config: Any, overrides: Iterable[str]) -> None:
  """Checks dotted override paths ('optim.lr') exist, naming the valid keys where one doesn't.

  ml_collections reports an unknown override as a bare KeyError deep in flag parsing; this
  gives the user the level of the config that exists and what it contains.
  """
  for path in overrides:
    node, walked = config, 'config'
    for part in path.split('.'):
      keys = _keys(node)
      if keys is None or part not in keys:
        valid = sorted(keys) if keys is not None else []
        raise ConfigError(f'--config.{path}: {walked} has no field {part!r}; valid fields of '
                          f'{walked}: {valid}')
      node, walked = node[part], f'{walked}.{part}'


def _keys(node: Any) -> list[str] | None:
  if isinstance(node, (ml_collections.ConfigDict, dict)):
    return list(node.keys())
  return None


# ----------------------------------------------------------------------------- shared defaults
# Experiment files start from these so every config has every field `validate` checks.


def optim_config(**overrides: Any) -> ml_collections.ConfigDict:
  """config.optim defaults (AdamW, warmup + cosine); see crossmodal/optim.py."""
  c = ml_collections.ConfigDict(dict(
      name='adamw', lr=1e-3, schedule='cosine', warmup_steps=0, end_lr_ratio=0.0,
      weight_decay=1e-4, grad_clip=0.0, accum_steps=1,
      momentum=0.9,  # sgd / rmsprop (0 = none)
      b1=0.9, b2=0.999, eps=1e-8,  # adamw (eps also rmsprop)
      rms_decay=0.9))
  c.update(overrides)
  return c


def objectives_config(**weights: float) -> ml_collections.ConfigDict:
  """config.objectives defaults (classification only); see crossmodal/objectives.py.

  weights: e.g. objectives_config(classification=0.0, contrastive=1.0).
  """
  c = ml_collections.ConfigDict(dict(
      classification=dict(weight=1.0),  # the fusion's classifier
      aux_classification=dict(weight=0.0),  # a linear head per modality on its pooled vector
      contrastive=dict(
          weight=0.0, pair=('audio', 'image'),
          loss='infonce',  # or 'triplet' (margin loss on cosine similarity)
          temperature=0.07,  # initial value when learned (CLIP)
          learn_temperature=True,
          margin=0.2,  # triplet only
          same_class_positives=False),  # with labels: every same-class pair is a positive
      reconstruction=dict(weight=0.0, source='audio', target='image', hidden=(512,)),
  ))
  unknown = sorted(set(weights) - set(OBJECTIVES))
  if unknown:
    raise ConfigError(f'objectives_config: unknown objective(s) {unknown}; valid: {OBJECTIVES}')
  for name, w in weights.items():
    c[name].weight = float(w)
  return c


def train_config(**overrides: Any) -> ml_collections.ConfigDict:
  """config.train defaults; see crossmodal/train.py."""
  c = ml_collections.ConfigDict(dict(
      num_steps=1000, log_every=50,
      checkpoint_every=500,  # 0 = only at evaluations and the end
      keep_checkpoints=2,  # the last K, plus the best by `best_metric`
      async_checkpoints=True,
      # '<evaluator>/<metric>' of an in-loop evaluator (config.evaluators); its evaluator
      # declares whether higher is better. '' = keep no best (the latest is evaluated).
      best_metric='validation/accuracy',
      modality_dropout=0.0,  # probability of hiding each modality of a training example
      parallel='jit',  # or 'pmap'
      sync_every_step='auto',  # block on each step's loss on CPU with >1 device (architecture.md)
      dtype='float32',  # compute dtype; 'bfloat16' keeps params/optimizer state float32
  ))
  c.update(overrides)
  return c
