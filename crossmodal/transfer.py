"""Starting from other runs and locking parameters: `config.init_from` and `config.train.frozen`.

  config.init_from.<name> = transfer.init_from_config(workdir='runs/clip', checkpoint='best',
                                                      source='image_encoder')
  config.train.frozen = ('image_encoder/.*',)   # LiT: a locked image tower

init_from: each entry copies the parameter subtree `source` ('/'-separated path into the
params, '' = all of them) of a checkpoint of another run (`best` as that run ranked its
checkpoints, `latest`, or a step number) into `target` (default: the same path) of a fresh
run, with the BatchNorm statistics under the same paths, restored through Orbax onto the
current device layout. Only a fresh start applies it: a run that resumes its own checkpoint
never does again. Paths, shapes and dtypes must match, or the error names both sides.

frozen: regular expressions, each matched in full (re.fullmatch) against parameter paths such
as 'image_encoder/conv_0/kernel'. Frozen parameters get no update and no optimizer state
(optax.multi_transform with set_to_zero), and an encoder whose parameters are all frozen runs
in inference mode (BatchNorm on its running statistics, which then stay as they are; no
dropout). A pattern that matches no parameter is an error (a typo would freeze nothing), and
so is freezing part of an encoder that has BatchNorm statistics (they would keep moving).
The source run's directory is opened read-only: nothing there is created, cleaned or saved.
"""
from __future__ import annotations

import json
import os
import re
from typing import Any, Mapping, Sequence

from etils import epath
import jax
import ml_collections
import optax

from crossmodal import schema

OPTIONS = {'workdir': '', 'checkpoint': 'best', 'source': '', 'target': ''}
CHECKPOINT_DIR = 'checkpoints'  # = train.CHECKPOINT_DIR (train imports this module)


def init_from_config(workdir: str, checkpoint: str = 'best', source: str = '',
                     target: str = '') -> ml_collections.ConfigDict:
  """One `config.init_from` entry (see the module docstring)."""
  return ml_collections.ConfigDict(dict(workdir=workdir, checkpoint=str(checkpoint),
                                        source=source, target=target))


def _checkpoint_ok(v: str) -> bool:
  return v in ('best', 'latest') or v.isdigit()


def check_config(init_from: Any, frozen: Sequence[str]) -> None:
  """ConfigError for a bad entry or pattern (reads nothing)."""
  problems = []
  for name, entry in schema.as_dict(init_from).items():
    problems += schema.problems(
        f'config.init_from.{name}', schema.as_dict(entry), OPTIONS, required=('workdir',),
        rules={'workdir': (bool, 'must name the workdir of the run to start from'),
               'checkpoint': (_checkpoint_ok, "must be 'best', 'latest' or a step number")})
  for pattern in frozen:
    try:
      re.compile(pattern)
    except re.error as e:
      problems.append(f'config.train.frozen: {pattern!r} is not a regular expression ({e})')
  if problems:
    raise schema.ConfigError(problems=problems)


def check_sources(init_from: Any) -> None:
  """ConfigError for an entry whose workdir has no checkpoints: checked when a run starts
  fresh, before any data is read (a resumed run does not read them)."""
  problems = [f'config.init_from.{name}.workdir={entry["workdir"]!r}: has no {CHECKPOINT_DIR}/ '
              'directory; train that run first or fix the path'
              for name, entry in schema.as_dict(init_from).items()
              if not (epath.Path(entry['workdir']) / CHECKPOINT_DIR).exists()]
  if problems:
    raise schema.ConfigError(problems=problems)


# ----------------------------------------------------------------------------- paths


def _path_name(path) -> str:
  return '/'.join(str(getattr(k, 'key', getattr(k, 'name', k))) for k in path)


def param_paths(params: Any) -> list[str]:
  return [_path_name(p) for p, _ in jax.tree_util.tree_flatten_with_path(params)[0]]


def frozen_labels(params: Any, patterns: Sequence[str]) -> Any:
  """'frozen' / 'trainable' for each leaf of `params` (a tree of the same structure)."""
  compiled = [re.compile(p) for p in patterns]
  return jax.tree_util.tree_map_with_path(
      lambda path, _: ('frozen' if any(c.fullmatch(_path_name(path)) for c in compiled)
                       else 'trainable'), params)


def check_frozen(params: Any, batch_stats: Any, patterns: Sequence[str]) -> None:
  """ConfigError naming each pattern that matches no parameter path, and each part with
  BatchNorm statistics that the patterns freeze only in part: its BatchNorm would keep
  normalising with batch statistics and moving them, so the frozen layers' function would
  change (freeze the whole part, which then runs in inference mode, or none of it)."""
  paths = param_paths(params)
  unused = [p for p in patterns if not any(re.fullmatch(p, path) for path in paths)]
  if unused:
    tops = sorted({path.split('/')[0] for path in paths})
    raise schema.ConfigError(f'config.train.frozen: {unused} match no parameter (patterns are '
                             f"matched in full against paths like '{paths[0]}'; the top-level "
                             f'parts are {tops})')
  labels = frozen_labels(params, patterns)
  partly = [name for name, sub in labels.items() if name in (batch_stats or {})
            and len(set(jax.tree.leaves(sub))) > 1]
  if partly:
    raise schema.ConfigError(f'config.train.frozen={tuple(patterns)} freezes {partly} only in '
                             'part, and they have BatchNorm statistics, which would keep '
                             "moving: freeze all of such a part (e.g. 'image_encoder/.*'), "
                             'which then runs in inference mode, or none of it')


def frozen_encoders(params: Any, patterns: Sequence[str]) -> tuple[str, ...]:
  """Modalities whose encoder's parameters are all frozen (they run in inference mode)."""
  if not patterns:
    return ()
  labels = frozen_labels(params, patterns)
  return tuple(sorted(name[:-len('_encoder')] for name, sub in labels.items()
                      if name.endswith('_encoder')
                      and all(l == 'frozen' for l in jax.tree.leaves(sub))))


def counts(params: Any, patterns: Sequence[str]) -> dict[str, int]:
  """{'frozen': n, 'trainable': n} parameter counts (run_info.json)."""
  out = {'frozen': 0, 'trainable': 0}
  for label, leaf in zip(jax.tree.leaves(frozen_labels(params, patterns)),
                         jax.tree.leaves(params)):
    out[label] += int(leaf.size)
  return out


def lock(tx: optax.GradientTransformation, params: Any, patterns: Sequence[str]
         ) -> optax.GradientTransformation:
  """`tx` for the trainable parameters, nothing (no update, no state) for the frozen ones.
  Clipping and accumulation inside `tx` then see only the trainable gradients."""
  if not patterns:
    return tx
  labels = frozen_labels(params, patterns)
  return optax.multi_transform({'trainable': tx, 'frozen': optax.set_to_zero()}, labels)


# ----------------------------------------------------------------------------- init_from


def _subtree(tree: Mapping[str, Any], path: str, where: str) -> Any:
  node = tree
  for part in [p for p in path.split('/') if p]:
    if not isinstance(node, Mapping) or part not in node:
      have = sorted(node) if isinstance(node, Mapping) else []
      raise schema.ConfigError(f'{where}: no {path!r} (at {part!r}; there: {have})')
    node = node[part]
  return node


def _replace(tree: dict, path: str, value: Any) -> dict:
  parts = [p for p in path.split('/') if p]
  if not parts:
    return value
  return {**tree, parts[0]: _replace(tree[parts[0]], '/'.join(parts[1:]), value)}


def _ranking(workdir: str, meta: Mapping[str, Any]) -> tuple[str, str] | None:
  """(metric, mode) by which the run in `workdir` ranked its checkpoints, from the metadata
  it saved (older checkpoints lack it: then its config.json, and the rule of that time)."""
  if 'best' in meta:  # saved since 2026-12-04; None: that run kept no best
    return (meta['best']['metric'], meta['best']['mode']) if meta['best'] else None
  try:
    config = json.loads((epath.Path(workdir) / 'config.json').read_text())
    metric = config['train']['best_metric']
  except (FileNotFoundError, KeyError, json.JSONDecodeError):
    return None
  if not metric:
    return None
  metric = metric if '/' in metric else f'validation/{metric}'
  return metric, 'min' if metric.endswith('/loss') else 'max'


def load(name: str, entry: Mapping[str, Any], sharding: Any) -> tuple[Any, Any, int]:
  """(params, batch_stats, step) of the checkpoint an init_from entry names."""
  return restore(entry['workdir'], entry['checkpoint'], sharding,
                 where=f'config.init_from.{name}')


def restore(workdir: str, which: str | int, sharding: Any = None, *,
            where: str = '--workdir') -> tuple[Any, Any, int]:
  """(params, batch_stats, step) of checkpoint `which` ('best', 'latest' or a step) of the run
  in `workdir`, read as stored (no model needed); errors name `where` the run was given."""
  from crossmodal import checkpointing  # pylint: disable=import-outside-toplevel
  directory = os.path.join(workdir, CHECKPOINT_DIR)
  which = str(which)
  with checkpointing.Checkpointer(directory, max_to_keep=None, keep_best=False,
                                  async_save=False, read_only=True) as probe:
    latest = probe.latest_step()
    if latest is None:
      raise schema.ConfigError(f'{where}.workdir={workdir!r}: no checkpoint in '
                               f'{directory}; train that run first')
    ranking = _ranking(workdir, probe.meta(latest))
  if which == 'best' and ranking is None:
    raise schema.ConfigError(f"{where}.checkpoint='best': the run in {workdir} kept "
                             "no best checkpoint; use 'latest' or a step number")
  metric, mode = ranking or ('none', 'max')
  with checkpointing.Checkpointer(directory, max_to_keep=None, keep_best=ranking is not None,
                                  best_metric=metric, best_mode=mode, async_save=False,
                                  read_only=True) as ckpt:
    tree, meta = ckpt.restore_stored(step=int(which) if which.isdigit() else None,
                                     best=which == 'best', sharding=sharding)
  return tree['params'], tree.get('batch_stats') or {}, int(meta['step'])


def apply(init_from: Any, params: Any, batch_stats: Any, sharding: Any
          ) -> tuple[Any, Any, list[str]]:
  """(params, batch_stats, what was copied) with every init_from entry applied in order."""
  done = []
  for name, entry in schema.as_dict(init_from).items():
    entry = {**OPTIONS, **entry}
    where = f'config.init_from.{name}'
    source, target = entry['source'], entry['target'] or entry['source']
    their_params, their_stats, step = load(name, entry, sharding)
    theirs = _subtree(their_params, source, f'{where}.source (in {entry["workdir"]} step {step})')
    ours = _subtree(params, target, f'{where}.target (in this model)')
    check_same(theirs, ours, f'{entry["workdir"]} step {step} params/{source}',
                f'this model params/{target}', where)
    params = _replace(params, target, theirs)
    stats_source = _find(their_stats, source)
    if stats_source is not None and _find(batch_stats, target) is not None:
      check_same(stats_source, _find(batch_stats, target),
                  f'{entry["workdir"]} batch_stats/{source}', f'batch_stats/{target}', where)
      batch_stats = _replace(batch_stats, target, stats_source)
    done.append(f'{where}: params/{target} <- {entry["workdir"]} step {step} params/{source}')
  return params, batch_stats, done


def _find(tree: Any, path: str) -> Any:
  node = tree
  for part in [p for p in path.split('/') if p]:
    if not isinstance(node, Mapping) or part not in node:
      return None
    node = node[part]
  return node


def check_same(theirs: Any, ours: Any, their_name: str, our_name: str, where: str) -> None:
  """ConfigError naming both parameter paths where the two subtrees differ."""
  a = dict(zip(param_paths(theirs), jax.tree.leaves(theirs)))
  b = dict(zip(param_paths(ours), jax.tree.leaves(ours)))
  lines = [f'{p}: only in {their_name}' for p in sorted(set(a) - set(b))]
  lines += [f'{p}: only in {our_name}' for p in sorted(set(b) - set(a))]
  lines += [f'{p}: {their_name} has {a[p].dtype}{list(a[p].shape)}, {our_name} has '
            f'{b[p].dtype}{list(b[p].shape)}' for p in sorted(set(a) & set(b))
            if a[p].shape != b[p].shape or a[p].dtype != b[p].dtype]
  if lines:
    shown = '\n  '.join(lines[:20]) + ('' if len(lines) <= 20 else f'\n  ... {len(lines) - 20} '
                                       'more')
    raise schema.ConfigError(f'{where}: {their_name} does not fit {our_name}:\n  {shown}')
