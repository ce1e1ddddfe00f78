"""Config files: loading, preset-argument parsing, command-line overrides (type switches
included), diffing and writing them to the workdir; and `validate`.

`validate(config)` runs before anything is built (no model, no data, no compile), so a typo
or an out-of-range value costs a second, not a compile. It asks the module that owns each
node to check it (crossmodal/schema.py: data, model with its encoders, fusion and objectives,
optim) and checks config.train itself. Every message names the option as it is written on the
command line (`config.optim.name`) and lists the valid choices.
"""
from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import sys
import types
from typing import Any, Callable, Iterable, Mapping, Sequence

from etils import epath
import ml_collections

from crossmodal import files
from crossmodal import schema

ConfigError = schema.ConfigError

# Names that moved to the module owning them; still importable from here for config files.
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


_number, _int = schema.number, schema.integer


SECTIONS = ('seed', 'data', 'model', 'objectives', 'optim', 'train', 'evaluators', 'init_from')
# Loop options that config.evaluators took over (2026-12): where each one went.
MOVED_TO_EVALUATORS = {
    'eval_every': 'config.evaluators.<name>.every (per evaluator)',
    'eval_splits': 'config.evaluators: one classification evaluator per split '
                   '(evaluators.classification_config)',
    'max_eval_batches': 'config.evaluators.<name>.max_batches (classification evaluators)'}


def validate(config: Any, device_count: int | None = None,
             process_count: int | None = None) -> None:
  """Raises ConfigError listing every invalid option of a resolved config: config.data,
  config.model (with its encoders, fusion and config.objectives) and config.optim through
  the modules that own them (datasets.check_options, model.check_config, optim.check_config),
  config.train and the seed here.

  `device_count` / `process_count` (the global device and process counts; pass
  `jax.device_count()` / `jax.process_count()`) enable the batch divisibility checks.
  """
  from crossmodal import optim  # pylint: disable=import-outside-toplevel
  from crossmodal.data import datasets  # pylint: disable=import-outside-toplevel
  from crossmodal.models import model as model_lib  # pylint: disable=import-outside-toplevel
  from crossmodal import parallel  # pylint: disable=import-outside-toplevel
  e = _Errors(config)
  e.check('seed', lambda v: _int(v) and v >= 0, 'must be an int >= 0')
  num_steps = e.get('train.num_steps')
  owners = {'data': lambda node: datasets.check_options(node, device_count, process_count),
            'model': lambda node: model_lib.check_config(node, config.get('objectives')),
            'optim': lambda node: optim.check_config(node, num_steps)}
  for section, check in owners.items():
    node = e.get(section)
    if node is not _MISSING:
      try:
        check(node)
      except ConfigError as error:
        e.messages += error.problems

  train = e.get('train')
  if train is not _MISSING:
    e.messages += schema.problems(
        'config.train', schema.as_dict(train), train_config().to_dict(), required=True,
        choices={'parallel': parallel.PARALLEL_MODES, 'sync_every_step': parallel.SYNC_CHOICES,
                 'dtype': tuple(model_lib.DTYPES)},
        rules={'num_steps': schema.POSITIVE_INT, 'log_every': schema.POSITIVE_INT,
               'checkpoint_every': schema.int_at_least(0), 'keep_checkpoints':
               schema.int_at_least(1), 'async_checkpoints': schema.BOOL,
               'modality_dropout': (schema.FRACTION[0], 'must be in [0, 1) (probability of '
                                    'hiding each modality of a training example)'),
               'fsdp_min_size': schema.int_at_least(1),
               'frozen': (lambda v: all(isinstance(p, str) for p in v),
                          'must be a tuple of regular expressions over parameter paths')})
    mesh = schema.as_dict(train).get('mesh', '')
    if isinstance(mesh, str) and mesh:
      try:  # the device counts only with `device_count`
        sizes = parallel.parse_mesh(mesh, device_count)
        if sizes[parallel.FSDP_AXIS] > 1 and train.get('parallel') == 'pmap':
          e.messages.append(f"config.train.mesh={mesh!r} has an fsdp axis, which needs "
                            "config.train.parallel='jit' (pmap replicates the state)")
      except ValueError as error:
        e.messages.append(str(error))
    moved = sorted(set(schema.as_dict(train)) & set(MOVED_TO_EVALUATORS))
    e.messages += [f'config.train.{key} moved to {MOVED_TO_EVALUATORS[key]}' for key in moved]
  unknown = sorted(set(schema.as_dict(config)) - set(SECTIONS))
  if unknown:
    e.messages.append(f'config: unknown section(s) {unknown}; valid: {list(SECTIONS)}')
  if e.messages:
    messages = list(dict.fromkeys(e.messages))
    raise ConfigError('invalid config:\n  ' + '\n  '.join(messages))


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
                      # where the state lives and what is recomputed, not what is computed
                      'train.mesh', 'train.fsdp_min_size', 'model.remat',
                      'evaluators')


def experiment_changes(recorded: Mapping[str, Any], config: Any) -> list[str]:
  """What makes `config` another experiment than the `recorded` config.json, as 'dotted.key:
  old -> new' per differing leaf; NOT_THE_EXPERIMENT and fields the recorded config predates
  (added to the code since, at their defaults unless set) do not count. The options of the
  evaluator that `train.best_metric` reads (but its cadence, `every`) do count: they decide
  which checkpoint is best, and ranks computed two ways would not compare."""
  new = config if isinstance(config, Mapping) else to_dict(config)
  recorded = _upgrade(recorded)
  best = (new.get('train') or {}).get('best_metric') or ''
  ranking = f'evaluators.{best.split("/", 1)[0]}.' if best else None

  def how(key: str) -> bool:
    if ranking and key.startswith(ranking) and key != ranking + 'every':
      return False
    return any(key == k or key.startswith(k + '.') for k in NOT_THE_EXPERIMENT)
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


# ----------------------------------------------------------------------------- type switches


def _fusion_of_type(fusion_type: str) -> ml_collections.ConfigDict:
  from crossmodal.models import fusion  # pylint: disable=import-outside-toplevel
  return fusion.fusion_config(fusion_type)


def _encoder_of_type(modality: str, encoder_type: str) -> ml_collections.ConfigDict:
  from crossmodal.models import encoders  # pylint: disable=import-outside-toplevel
  return encoders.encoder_config(modality, encoder_type)


# Config nodes whose fields depend on their `type`: a dotted pattern ('*': any key) and the
# function giving a type's node at its defaults, called with the keys '*' matched, then the type.
TYPED_NODES: dict[str, Callable[..., ml_collections.ConfigDict]] = {
    'model.fusion': _fusion_of_type,
    'model.encoders.*': _encoder_of_type,
}


def _typed_node(path: str) -> tuple[Callable[..., Any], list[str]] | None:
  """(TYPED_NODES function, its '*' keys) for a node path, or None if it is not typed."""
  parts = path.split('.')
  for pattern, make in TYPED_NODES.items():
    want = pattern.split('.')
    if len(want) == len(parts) and all(w in ('*', p) for w, p in zip(want, parts)):
      return make, [p for w, p in zip(want, parts) if w == '*']
  return None


def _plain(value: Any) -> Any:
  """A value comparable across ConfigDicts, dicts, lists and tuples."""
  if isinstance(value, (ml_collections.ConfigDict, Mapping)):
    return {k: _plain(v) for k, v in schema.as_dict(value).items()}
  if isinstance(value, (list, tuple)):
    return tuple(_plain(v) for v in value)
  return value


def switch_type(config: Any, path: str, new_type: str, command_line: Iterable[str] = ()) -> None:
  """Gives the typed node at `path` ('model.fusion', 'model.encoders.image': TYPED_NODES) the
  type `new_type`, as `--config.<path>.type=<new_type>` asks, in place.

  The rule: the node gets exactly the new type's fields. A field that holds the old type's
  default gives way to the new type's default; a field set explicitly (in the config file: its
  value differs from the old type's default) keeps its value if the new type has it, and is an
  error naming it if it does not. So is a field of the node set on the command line
  (`command_line`: the dotted paths of all overrides, applied afterwards by the caller) that
  the new type does not have; the new type's own fields may be set there. An unknown type is
  an error listing the valid ones. Raises ConfigError; does nothing if the type is unchanged.
  """
  *parents, key = path.split('.')
  parent = _walk(config, '.'.join(parents)) if parents else config
  node, (make, keys) = parent[key], _typed_node(path)
  old_type = node.get('type')
  if new_type == old_type:
    return
  new = make(*keys, new_type)
  try:
    old_defaults = _plain(make(*keys, old_type))
  except ConfigError:
    old_defaults = {}
  old = _plain(node)
  explicit = [k for k in node if k != 'type' and old[k] != old_defaults.get(k, _MISSING)]
  set_here = [p[len(path) + 1:].split('.')[0] for p in command_line
              if p.startswith(path + '.') and p != f'{path}.type']
  fields = sorted(set(new) - {'type'})
  problems = [f'config.{path}.{k}={old[k]!r} is set by the config file, but type {new_type!r} '
              f'of config.{path} has no such field (its fields: {fields}); use a config file '
              f'or preset that sets type {new_type!r}' for k in explicit if k not in new]
  problems += [f'--config.{path}.{k}: type {new_type!r} of config.{path} has no field {k!r}; '
               f'its fields: {fields}' for k in dict.fromkeys(set_here) if k not in new]
  if problems:
    raise ConfigError(problems=problems)
  for k in explicit:
    new[k] = node[k]
  unlocked = isinstance(parent, ml_collections.ConfigDict)
  with parent.unlocked() if unlocked else contextlib.nullcontext():
    parent[key] = new


def switch_types(config: Any, overrides: Mapping[str, Any]) -> None:
  """Applies every type override of `overrides` ({dotted path: value}, in command-line order)
  to a typed node of `config` with `switch_type`; the caller then applies the overrides."""
  paths = list(overrides)
  for path, value in overrides.items():
    node = path[:-len('.type')]
    if path.endswith('.type') and _typed_node(node) is not None and isinstance(value, str):
      try:
        _walk(config, node)
      except (KeyError, AttributeError, TypeError):
        continue  # not in this config: check_overrides names it
      switch_type(config, node, value, command_line=paths)


def _walk(config: Any, path: str) -> Any:
  for part in path.split('.'):
    config = config[part]
  return config


def apply_overrides(config: Any, overrides: Mapping[str, Any]) -> Any:
  """`config` with `overrides` ({dotted path: value}) applied as `--config.<path>=<value>`
  arguments are: type switches first (switch_types), then every value. Returns `config`."""
  switch_types(config, overrides)
  config.update_from_flattened_dict(dict(overrides))
  return config


def command_line_overrides(argv: Sequence[str], name: str = 'config') -> dict[str, str | None]:
  """{dotted path: value as written} of the `--config.<path>=<value>` (or `--config.<path>
  <value>`) arguments in `argv`, in order (a repeated path keeps its last value and place);
  a bare `--config.<path>` / `--noconfig.<path>` (booleans) gives None."""
  out: dict[str, str | None] = {}
  prefixes = (f'--{name}.', f'-{name}.', f'--no{name}.', f'-no{name}.')
  for i, arg in enumerate(argv):
    prefix = next((p for p in prefixes if arg.startswith(p)), None)
    if prefix is None:
      continue
    path, eq, value = arg[len(prefix):].partition('=')
    if not eq:
      following = argv[i + 1] if i + 1 < len(argv) else None
      value = following if following is not None and not following.startswith('-') else None
    out.pop(path, None)
    out[path] = value
  return out


# ----------------------------------------------------------------------------- shared defaults
# Experiment files start from these so every config has every field `validate` checks.


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
      # jit only: '' = every device on the data axis; 'data:2,fsdp:4' also shards every state
      # array of at least fsdp_min_size elements over the fsdp axis (parallel.py)
      mesh='', fsdp_min_size=1 << 14,
      sync_every_step='auto',  # block on each step's loss on CPU with >1 device (architecture.md)
      dtype='float32',  # compute dtype; 'bfloat16' keeps params/optimizer state float32
      frozen=(),  # regexes over parameter paths that get no update (transfer.py; LiT)
  ))
  c.update(overrides)
  return c
