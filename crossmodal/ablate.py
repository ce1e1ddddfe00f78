r"""Sweep runner: a base config x named variants x seeds -> runs, `results.csv`, a table, plots.

  python scripts/ablate.py --config=experiments/avmnist.py --sweep=experiments/sweeps/fusion.py \
      --seeds=3 --root=runs/fusion

A sweep file defines `get_sweep()` returning a list of `Variant`s: a name, a preset string for
the base config's `get_config(arg)` (merged after the base's own preset, so it wins) and dotted
overrides. Each variant x seed is one ordinary `python -m crossmodal.main` run in
`<root>/<variant>/seed<k>`, started as a subprocess, so a sweep run is exactly what a researcher
would run by hand (`--dry_run` prints those commands, to send them elsewhere).

Restarting a sweep continues it: a run whose `sweep_status.json` says `done` is skipped; any
other run (failed, preempted, interrupted) is started again and `main` resumes it from its
latest checkpoint. If a workdir holds another experiment than the sweep now plans there (its
config.json differs from the resolved config: an edited sweep file or base config), the runner
refuses to start rather than mix the two. A failed run stays in the table as failed, with the
reason from its log, never silently dropped. If the runner itself is stopped (Ctrl-C, SIGTERM,
SIGHUP), it starts nothing new, sends SIGTERM to the runs in progress (which save a checkpoint
and exit) and then dies of the signal. `--export_records=DIR` copies what the finished runs
recorded, without checkpoints, to a small tree that can be committed and later copied back
under a root, so a study continues across machines that do not share a disk.

Results come from each workdir: `metrics.jsonl` (test accuracy / macro-F1 of the checkpoint
chosen by `train.best_metric`: the `eval_test` record written by `--mode=train_and_eval`; the
final periodic test accuracy; the validation curve; training examples/s), `run_info.json`
(parameter count, git commit) and `sweep_status.json` (wall time summed over attempts). The
scalar results of the other evaluators (`eval_retrieval`, `eval_robustness`, ...:
crossmodal/evaluators/) become columns `<evaluator>/<metric>` of results.csv, and the
headlines their evaluators declare a second table (`--metrics` prints any others). Reading goes through
etils.epath, so `--report_only` / `--dry_run` also work on a gs:// root filled by runs on TPU
VMs (scripts/tpu_vm.py sweep); a run without a status file counts as done once it has its
`eval_test` record. Running needs a local root (the runner keeps each run's log there).
"""
from __future__ import annotations

import argparse
import concurrent.futures
import csv
import dataclasses
import io
import json
import logging
import os
import re
import shlex
import signal
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from typing import Any

from etils import epath

from crossmodal import config_utils
from crossmodal import files
from crossmodal.run_info import RUN_INFO

STATUS = 'sweep_status.json'
LOG = 'sweep.log'
# What a finished run is, without its checkpoints and logs (`export_records`).
RECORDS = ('config.json', 'metrics.jsonl', RUN_INFO, STATUS)
PREEMPTED_EXIT_CODE = 75  # = crossmodal.main.PREEMPTED_EXIT_CODE: saved on SIGTERM, unfinished
CSV_FIELDS = ('variant', 'seed', 'status', 'test_accuracy', 'test_macro_f1',
              'final_test_accuracy', 'best_validation_accuracy', 'num_params',
              'examples_per_sec', 'wall_time_s', 'code', 'workdir', 'error')
# Classification evaluators of runs whose config.json predates config.evaluators holding them.
_LEGACY_CLASSIFICATION = ('validation', 'test', 'train')


@dataclasses.dataclass(frozen=True)
class Variant:
  """One row of the study. `arg`: preset string for get_config (e.g. 'fusion=crossattn');
  `overrides`: {'model.fusion.num_layers': 3, ...}, passed as --config.<key>=<value>."""
  name: str
  arg: str = ''
  overrides: Mapping[str, Any] = dataclasses.field(default_factory=dict)

  def __post_init__(self):
    if not self.name or '/' in self.name or self.name != self.name.strip():
      raise ValueError(f'Variant name {self.name!r} must be non-empty, without "/" (it names '
                       'a directory)')


@dataclasses.dataclass(frozen=True)
class Run:
  variant: Variant
  seed: int
  workdir: str
  command: tuple[str, ...]
  config: str = ''  # `path[:arg]` as --config gets it
  extra_args: tuple[str, ...] = ()


# ----------------------------------------------------------------------------- planning


def load_sweep(path: str) -> list[Variant]:
  """`get_sweep()` of a sweep file, checked: Variants with distinct names."""
  if not os.path.isfile(path):
    raise FileNotFoundError(f'sweep file {path} does not exist')
  module = config_utils.load_module(path, '_crossmodal_sweep')
  if not hasattr(module, 'get_sweep'):
    raise ValueError(f'sweep file {path} must define get_sweep() -> list[Variant]')
  variants = list(module.get_sweep())
  if not variants or not all(isinstance(v, Variant) for v in variants):
    raise ValueError(f'{path}: get_sweep() must return a non-empty list of '
                     'crossmodal.ablate.Variant')
  names = [v.name for v in variants]
  duplicates = sorted({n for n in names if names.count(n) > 1})
  if duplicates:
    raise ValueError(f'{path}: duplicate variant names {duplicates}')
  return variants


def _format_value(value: Any) -> str:
  if isinstance(value, (tuple, list)):
    return '(' + ','.join(map(repr, value)) + (',)' if len(value) == 1 else ')')
  return str(value)


def plan(config: str, variants: Sequence[Variant], seeds: Sequence[int], root: str,
         mode: str = 'train_and_eval', python: str = sys.executable,
         extra_args: Sequence[str] = ()) -> list[Run]:
  """Every variant x seed as a `crossmodal.main` command with its own workdir (`extra_args`
  are appended to every command)."""
  path, _, base_arg = config.partition(':')
  runs = []
  for v in variants:
    arg = ','.join(a for a in (base_arg, v.arg) if a)
    spec = f'{path}:{arg}' if arg else path
    for seed in seeds:
      workdir = os.path.join(root, v.name, f'seed{seed}')
      command = [python, '-m', 'crossmodal.main', f'--config={spec}', f'--workdir={workdir}',
                 f'--mode={mode}', f'--config.seed={seed}']
      command += [f'--config.{k}={_format_value(x)}' for k, x in v.overrides.items()]
      command += list(extra_args)
      runs.append(Run(v, seed, workdir, tuple(command), spec, tuple(extra_args)))
  return runs


# ----------------------------------------------------------------------------- running


def read_status(workdir: str) -> dict[str, Any]:
  try:
    return json.loads((epath.Path(workdir) / STATUS).read_text())
  except (FileNotFoundError, json.JSONDecodeError):
    return {}


def _write_status(workdir: str, status: Mapping[str, Any]) -> None:
  files.write_file(os.path.join(workdir, STATUS), json.dumps(status, indent=2))


def planned_config(run: Run) -> dict[str, Any] | None:
  """The resolved config `main` will write to the run's config.json; None when extra command
  arguments (strings absl parses) or a config that does not load leave it to the command."""
  if run.extra_args or not run.config:
    return None
  try:
    config = config_utils.load_config_file(run.config)
    config = config_utils.apply_overrides(config, {'seed': run.seed, **run.variant.overrides})
  except Exception:  # pylint: disable=broad-except  (main reports what is wrong)
    return None
  return config_utils.to_dict(config)


def changed_runs(runs: Sequence[Run]) -> list[tuple[Run, str]]:
  """Runs whose workdir holds another experiment than the sweep now plans there: its
  config.json (written when training starts) differs from the resolved config in what the run
  computes (`config_utils.experiment_changes`: an edited sweep file, base config file or
  preset; not paths or cadence). Skipping or resuming them would mix two experiments under
  one name, so the runner refuses to start until they are moved away. A workdir without
  config.json trained nothing, so running it with the new command mixes nothing.
  Returns (run, what differs)."""
  changed = []
  for run in runs:
    try:
      recorded = json.loads((epath.Path(run.workdir) / 'config.json').read_text())
    except (FileNotFoundError, json.JSONDecodeError):
      continue
    planned = planned_config(run)
    diff = config_utils.experiment_changes(recorded, planned) if planned is not None else []
    if diff:
      changed.append((run, 'config.json differs: ' + '; '.join(diff)))
  return changed


def failure_reason(log_text: str, returncode: int) -> str:
  """One line: main's `error: ...` message, else the last exception line, else the signal."""
  if returncode < 0:
    return f'killed by signal {-returncode}'
  if returncode == PREEMPTED_EXIT_CODE:
    return 'SIGTERM, checkpoint saved; resumes on the next start'
  lines = [l.strip() for l in log_text.splitlines() if l.strip()]
  for line in reversed(lines):
    if line.startswith('error: '):
      return line[len('error: '):]
  for line in reversed(lines):
    head = line.split(':', 1)[0]
    if head.endswith(('Error', 'Exception')) and ' ' not in head:
      return line
  return f'exit code {returncode}'


# Runs in progress, so a signal to the runner reaches them (`stop_runs`); set when stopping.
_live: set[subprocess.Popen] = set()
_stopping = threading.Event()


def stop_runs(signum: int, frame: Any = None) -> None:  # pylint: disable=unused-argument
  """Signal handler: start no more runs and SIGTERM the ones in progress, which save a
  checkpoint and exit (`preempted`); the next start of the sweep resumes them."""
  _stopping.set()
  for process in list(_live):
    process.send_signal(signal.SIGTERM)


def execute(run: Run, poll_seconds: float = 10.0, env: Mapping[str, str] | None = None
            ) -> dict[str, Any] | None:
  """Runs (or resumes) one run unless it is done; returns its final status (None: not started,
  the runner is stopping).

  Wall time is added to the status every `poll_seconds`, so time spent before a crash of the
  sweep itself is still counted when it resumes.
  """
  status = read_status(run.workdir)
  if status.get('state') == 'done':
    return status
  if _stopping.is_set():
    return None
  os.makedirs(run.workdir, exist_ok=True)
  status = {'state': 'running', 'attempts': status.get('attempts', 0) + 1,
            'wall_time_s': float(status.get('wall_time_s', 0.0)),
            'command': shlex.join(run.command)}
  _write_status(run.workdir, status)
  start = time.monotonic()
  base_wall = status['wall_time_s']
  with open(os.path.join(run.workdir, LOG), 'a', encoding='utf-8') as log:
    log.write(f'\n===== attempt {status["attempts"]}: {status["command"]}\n')
    log.flush()
    # Its own session: Ctrl-C in the terminal reaches the runner alone, which then SIGTERMs
    # the run (a SIGINT would kill it without a checkpoint).
    process = subprocess.Popen(run.command, stdout=log, stderr=subprocess.STDOUT,
                               env={**os.environ, **(env or {})}, start_new_session=True)
    _live.add(process)
    if _stopping.is_set():  # the signal came between the check in run_all and the start
      process.send_signal(signal.SIGTERM)
    try:
      while True:
        try:
          returncode = process.wait(timeout=poll_seconds)
          break
        except subprocess.TimeoutExpired:
          status['wall_time_s'] = base_wall + time.monotonic() - start
          _write_status(run.workdir, status)
    finally:
      if process.poll() is None:  # the runner is failing: let the run save and exit
        process.terminate()
        process.wait()
      _live.discard(process)
  status['wall_time_s'] = base_wall + time.monotonic() - start
  status['returncode'] = returncode
  if returncode == 0:
    status['state'] = 'done'
    status.pop('error', None)
  elif returncode == PREEMPTED_EXIT_CODE:
    status['state'] = 'preempted'
    status['error'] = failure_reason('', returncode)
  else:
    with open(os.path.join(run.workdir, LOG), encoding='utf-8', errors='replace') as f:
      attempt_log = f.read().rsplit('===== attempt ', 1)[-1]
    status['state'] = 'failed'
    status['error'] = failure_reason(attempt_log, returncode)
  _write_status(run.workdir, status)
  return status


def run_all(runs: Sequence[Run], parallel: int = 1, log=print) -> None:
  """Executes the runs, `parallel` at a time, in order; reports each as it ends."""
  lock = threading.Lock()

  def one(run: Run) -> None:
    if _stopping.is_set():
      return
    before = read_status(run.workdir).get('state')
    if before == 'done':
      with lock:
        log(f'[skip] {run.variant.name} seed {run.seed}: already done')
      return
    with lock:
      log(f'[{"resume" if before else "start"}] {run.variant.name} seed {run.seed}: '
          f'{run.workdir}')
    status = execute(run)
    if status is None:
      return
    with lock:
      extra = f': {status["error"]}' if status['state'] == 'failed' else ''
      log(f'[{status["state"]}] {run.variant.name} seed {run.seed} '
          f'({status["wall_time_s"]:.0f} s){extra}')

  if parallel <= 1 or len(runs) <= 1:
    for run in runs:
      one(run)
    return
  # A dataset still to build is built by the first run alone: concurrent runs would each build
  # it (tfds_formats.prepare_once makes that safe, but it wastes the time).
  first = next((r for r in runs if read_status(r.workdir).get('state') != 'done'), None)
  alone = first if first is not None and not data_prepared(first) else None
  if alone is not None:
    one(alone)
  with concurrent.futures.ThreadPoolExecutor(parallel) as pool:
    list(pool.map(one, [r for r in runs if r is not alone]))


def data_prepared(run: Run) -> bool:
  """Whether the run's dataset is on disk already (False when that cannot be told)."""
  config = planned_config(run)
  if config is None:
    return False
  from crossmodal.data import datasets  # pylint: disable=import-outside-toplevel
  absl_logger = logging.getLogger('absl')  # TFDS warns of every custom builder config
  level = absl_logger.level
  absl_logger.setLevel(logging.ERROR)
  try:
    datasets.dataset_info(config.get('data', {}))
  except Exception:  # pylint: disable=broad-except  (not prepared, or a config main rejects)
    return False
  finally:
    absl_logger.setLevel(level)
  return True


# ----------------------------------------------------------------------------- collecting


def collect_run(run: Run) -> dict[str, Any]:
  """One results.csv row (numbers are None where the run has not produced them)."""
  status = read_status(run.workdir)
  records = files.read_jsonl(os.path.join(run.workdir, 'metrics.jsonl'))
  row: dict[str, Any] = {k: None for k in CSV_FIELDS}
  row.update(variant=run.variant.name, seed=run.seed, workdir=run.workdir,
             status=status.get('state', 'not started'), error=status.get('error'),
             wall_time_s=status.get('wall_time_s'))
  chosen = [r for r in records if r['split'] == 'eval_test']  # best-by-validation checkpoint
  if chosen:  # no accuracy when no classifier is trained (e.g. contrastive only)
    row['test_accuracy'] = chosen[-1].get('accuracy')
    row['test_macro_f1'] = chosen[-1].get('macro_f1')
    if not status:  # started outside this runner (--dry_run commands, TPU VM sweep)
      row['status'] = 'done'
  periodic = [r for r in records if r['split'] == 'test']
  if periodic:
    row['final_test_accuracy'] = periodic[-1].get('accuracy')
  validation = [r['accuracy'] for r in records if r['split'] == 'validation' and 'accuracy' in r]
  if validation:
    row['best_validation_accuracy'] = max(validation)
  speeds = [r['examples_per_sec'] for r in records
            if r['split'] == 'train' and 'examples_per_sec' in r]
  if len(speeds) > 2:
    speeds = speeds[1:]  # the first logged interval includes compilation
  if speeds:
    row['examples_per_sec'] = statistics.median(speeds)
  try:
    info = json.loads((epath.Path(run.workdir) / RUN_INFO).read_text())
  except (FileNotFoundError, json.JSONDecodeError):
    info = {}
  row['num_params'] = info.get('num_params')
  code = info.get('code') or {}
  if code.get('git_commit'):  # the commit of the latest attempt; runs before 2026-11-25 lack it
    row['code'] = code['git_commit'][:12] + ('+dirty' if code.get('git_dirty') else '')
  classification = ['eval_' + name for name in _classification_evaluators(run.workdir)]
  latest = {r['split']: r for r in records  # the latest record of each other evaluator
            if r['split'].startswith('eval_') and r['split'] not in classification}
  for split, r in latest.items():
    row.update({f'{split[len("eval_"):]}/{k}': v for k, v in r.items()
                if k not in ('step', 'split') and isinstance(v, (int, float))
                and not isinstance(v, bool)})
  if row['status'] == 'done' and not chosen:
    row['status'], row['error'] = 'failed', 'finished without a test evaluation'
  return row


def _recorded_config(workdir: str) -> dict[str, Any]:
  try:
    return json.loads((epath.Path(workdir) / 'config.json').read_text())
  except (FileNotFoundError, json.JSONDecodeError):
    return {}


def _types(config: Mapping[str, Any]) -> dict[str, str]:
  """{config.evaluators entry: its type} of a recorded config."""
  return {name: e.get('type') or name for name, e in (config.get('evaluators') or {}).items()}


def _evaluator_types(runs: Sequence[Run]) -> dict[str, str]:
  return {k: v for run in runs for k, v in _types(_recorded_config(run.workdir)).items()}


def _classification_evaluators(workdir: str) -> list[str]:
  """Names of the run's classification evaluators (results.csv has columns of their own)."""
  config = _recorded_config(workdir)
  if not config.get('evaluators'):  # older records (or none) named them by split
    return list(_LEGACY_CLASSIFICATION)
  return [n for n, t in _types(config).items() if t == 'classification']


def export_records(runs: Sequence[Run], root: str, dest: str) -> int:
  """Copies the records of each finished run (`RECORDS`: no checkpoints, no logs) from
  `root/<variant>/seed<k>` to `dest/<variant>/seed<k>`; returns how many runs were copied.

  The copy is small enough to commit or mail, and is a sweep root of its own: `--report_only`
  on it rebuilds the table and plots, and copied back under a root, the runner skips those
  runs. So a study split over machines or sessions that lose their disks continues where it
  stopped. Unfinished runs are left out: without their checkpoints they could not resume."""
  copied = 0
  for run in runs:
    if collect_run(run)['status'] != 'done':
      continue
    target = epath.Path(dest) / os.path.relpath(run.workdir, root)
    target.mkdir(parents=True, exist_ok=True)
    for name in RECORDS:
      source = epath.Path(run.workdir) / name
      if source.exists():
        (target / name).write_text(source.read_text())
    copied += 1
  return copied


def evaluator_columns(rows: Sequence[Mapping[str, Any]]) -> list[str]:
  """The `<evaluator>/<metric>` columns present in any row, sorted."""
  return sorted({k for r in rows for k in r if k not in CSV_FIELDS and '/' in k})


def validation_curve(run: Run, metric: str = 'accuracy') -> list[tuple[int, float]]:
  records = files.read_jsonl(os.path.join(run.workdir, 'metrics.jsonl'))
  return [(r['step'], r[metric]) for r in records
          if r['split'] == 'validation' and metric in r]


def _mean_std(values: Sequence[float]) -> tuple[float, float]:
  """Mean and sample standard deviation (0 for a single value)."""
  return statistics.mean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def aggregate(rows: Sequence[Mapping[str, Any]], order: Sequence[str]) -> list[dict[str, Any]]:
  """Per variant: mean and sample std over its finished seeds (`n`: how many had each value),
  and what failed and why."""
  out = []
  for name in order:
    mine = [r for r in rows if r['variant'] == name]
    ok = [r for r in mine if r['status'] == 'done']
    agg: dict[str, Any] = {'variant': name, 'runs': len(mine), 'done': len(ok),
                           'failures': [(r['seed'], r['status'], r['error']) for r in mine
                                        if r['status'] != 'done'], 'n': {}}
    for key in ('test_accuracy', 'test_macro_f1', 'final_test_accuracy',
                'best_validation_accuracy', 'examples_per_sec', 'wall_time_s', 'num_params',
                *evaluator_columns(rows)):
      values = [r[key] for r in ok if r.get(key) is not None]
      agg[key] = _mean_std(values) if values else None
      agg['n'][key] = len(values)
    out.append(agg)
  return out


def _pm(value: tuple[float, float] | None, n: int, scale: float = 100.0,
        digits: int = 2) -> str:
  """'mean ± std', or just the mean when it comes from a single run."""
  if value is None:
    return '-'
  mean = f'{value[0] * scale:.{digits}f}'
  return mean if n < 2 else f'{mean} ± {value[1] * scale:.{digits}f}'


def markdown_table(table: Sequence[Mapping[str, Any]]) -> str:
  """Variant | test acc | macro-F1 | final test acc | best val acc | params | examples/s |
  wall time | runs. The best row (highest mean test accuracy among variants whose runs all
  finished) is marked."""
  complete = [a for a in table if a['test_accuracy'] is not None and a['done'] == a['runs']]
  best = max(complete, key=lambda a: a['test_accuracy'][0])['variant'] if complete else None
  lines = ['| variant | test accuracy (%) | test macro-F1 (%) | final test accuracy (%) | '
           'best val. accuracy (%) | params | examples/s | wall time (s) | runs |',
           '|---|---|---|---|---|---|---|---|---|']
  for a in table:
    name = f'**{a["variant"]}** (best)' if a['variant'] == best else a['variant']
    runs = f'{a["done"]}/{a["runs"]}'
    if a['failures']:
      reasons = '; '.join(f'seed {s} {state}' + (f': {err}' if err else '')
                          for s, state, err in a['failures'])
      runs += f' ({reasons})'.replace('|', '\\|')
    params = f'{a["num_params"][0]:,.0f}' if a['num_params'] else '-'
    pm = lambda k, *fmt: _pm(a[k], a['n'][k], *fmt)
    lines.append(f'| {name} | {pm("test_accuracy")} | {pm("test_macro_f1")} | '
                 f'{pm("final_test_accuracy")} | {pm("best_validation_accuracy")} | {params} | '
                 f'{pm("examples_per_sec", 1, 0)} | {pm("wall_time_s", 1, 0)} | {runs} |')
  return '\n'.join(lines) + '\n'


def evaluator_table(table: Sequence[Mapping[str, Any]], headlines: Sequence[str] | None = None,
                    types: Mapping[str, str] | None = None) -> str:
  """Variant | each `<evaluator>/<metric>` column matching one of `headlines` (regexes over the
  whole column), or by default each whose metric its evaluator's type declares a headline
  (`types`: {entry name: evaluator type}; an entry without one is its own type); mean ± std
  over finished seeds; empty when no run has evaluator records. Accuracies and recalls in %,
  ranks and errors raw; a value that only some finished seeds have says how many (`(1/3
  seeds)`)."""
  if headlines is None:
    from crossmodal import evaluators  # pylint: disable=import-outside-toplevel
    declared = evaluators.headlines()

    def shown(column: str) -> bool:
      name, metric = column.split('/', 1)
      kind = (types or {}).get(name, name)
      return any(re.search(h, metric) for h in declared.get(kind, ()))
  else:
    shown = lambda column: any(re.search(h, column) for h in headlines)
  keys = [k for k in table[0]['n'] if '/' in k and shown(k)] if table else []
  keys = [k for k in keys if any(a[k] is not None for a in table)]
  if not keys:
    return ''
  raw = lambda k: k.endswith(('rank', 'mse')) or k.rsplit('/', 1)[-1].startswith('num_')
  header = [k + ('' if raw(k) else ' (%)') for k in keys]
  lines = ['| variant | ' + ' | '.join(header) + ' |', '|---' * (len(keys) + 1) + '|']
  for a in table:
    cells = [_pm(a[k], a['n'][k], 1 if raw(k) else 100, 4 if k.endswith('mse') else
                 1 if raw(k) else 2)
             + (f' ({a["n"][k]}/{a["done"]} seeds)' if 0 < a['n'][k] < a['done'] else '')
             for k in keys]
    lines.append(f'| {a["variant"]} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


def no_accuracy_reason(a: Mapping[str, Any]) -> str:
  """Why an `aggregate` row has no test accuracy: a run failed, runs are still to come, or
  every run finished without a classifier (e.g. contrastive training alone)."""
  if any(status == 'failed' for _, status, _ in a['failures']):
    return 'failed'
  return 'not finished' if a['done'] < a['runs'] else 'no classifier'


def plot(runs: Sequence[Run], table: Sequence[Mapping[str, Any]], root: str) -> list[str]:
  """accuracy.png (test accuracy per variant, mean ± std) and validation_curves.png."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top

  paths = []
  names = [a['variant'] for a in table]
  fig, ax = plt.subplots(figsize=(max(4, 0.6 * len(names) + 2), 3.5))
  for i, a in enumerate(table):
    if a['test_accuracy'] is None:
      ax.annotate(no_accuracy_reason(a), (i, 0.02), xycoords=('data', 'axes fraction'),
                  ha='center', va='bottom', color='tab:red',
                  rotation=90)
      continue
    mean, std = a['test_accuracy']
    # Points, not bars from 0: the differences that matter are fractions of a point.
    ax.errorbar(i, 100 * mean, yerr=100 * std, fmt='o', capsize=3, color='tab:blue')
  ax.set_xticks(range(len(names)), names, rotation=45, ha='right')
  ax.grid(axis='y', alpha=0.3)
  ax.set_ylabel('test accuracy (%)')
  ax.set_title('mean ± std over seeds')
  fig.tight_layout()
  paths.append(_save_figure(fig, os.path.join(root, 'accuracy.png')))
  plt.close(fig)

  # Validation accuracy, or the loss when no run has a classifier (contrastive training).
  metric = ('accuracy' if any(validation_curve(r) for r in runs) else 'loss')
  scale = 100 if metric == 'accuracy' else 1
  fig, ax = plt.subplots(figsize=(6, 4))
  for i, name in enumerate(names):
    curves = [validation_curve(r, metric) for r in runs if r.variant.name == name]
    curves = [c for c in curves if c]
    if not curves:
      continue
    steps = sorted(set.intersection(*[{s for s, _ in c} for c in curves]))
    if not steps:
      continue
    mean = [scale * sum(dict(c)[s] for c in curves) / len(curves) for s in steps]
    # 10 colours, then the next line style: no two variants look alike.
    ax.plot(steps, mean, marker='.', label=name, color=f'C{i % 10}',
            linestyle=('-', '--', ':', '-.')[i // 10 % 4])
  ax.set_xlabel('step')
  ax.set_ylabel('validation accuracy (%)' if metric == 'accuracy' else 'validation loss')
  if ax.get_lines():
    ax.legend(fontsize='small', ncol=2)
  fig.tight_layout()
  paths.append(_save_figure(fig, os.path.join(root, 'validation_curves.png')))
  plt.close(fig)
  return paths


def _save_figure(fig, path: str) -> str:
  buffer = io.BytesIO()
  fig.savefig(buffer, format='png', dpi=120)
  files.write_file(path, buffer.getvalue())
  return path


def report(runs: Sequence[Run], root: str, order: Sequence[str]) -> tuple[str, list[dict]]:
  """Writes results.csv, results.md and the plots under `root`; returns the table text."""
  epath.Path(root).mkdir(parents=True, exist_ok=True)
  rows = [collect_run(r) for r in runs]
  buffer = io.StringIO()
  writer = csv.DictWriter(buffer, list(CSV_FIELDS) + evaluator_columns(rows))
  writer.writeheader()
  writer.writerows(rows)
  (epath.Path(root) / 'results.csv').write_text(buffer.getvalue())
  table = aggregate(rows, order)
  text = markdown_table(table)
  evaluated = evaluator_table(table, types=_evaluator_types(runs))
  if evaluated:
    text += '\nEvaluators (crossmodal/evaluators/) on the same checkpoints:\n\n' + evaluated
  (epath.Path(root) / 'results.md').write_text(text)
  plot(runs, table, root)
  return text, rows


# ----------------------------------------------------------------------------- command line


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--config', required=True, help='base config, path[:preset]')
  p.add_argument('--sweep', required=True, help='sweep file defining get_sweep()')
  p.add_argument('--root', required=True, help='directory for all runs and the results')
  p.add_argument('--seeds', type=int, default=3, help='seeds 0..N-1 (default 3)')
  p.add_argument('--first_seed', type=int, default=0)
  p.add_argument('--only', default='', help='comma-separated variant names to run (or print); '
                 'results.md and results.csv still cover the whole sweep')
  p.add_argument('--parallel', type=int, default=1, help='runs at once (default 1); a '
                 'dataset not yet on disk is built by the first run alone')
  p.add_argument('--dry_run', action='store_true', help='print the commands, run nothing')
  p.add_argument('--report_only', action='store_true', help='collect results, run nothing')
  p.add_argument('--export_records', default='', metavar='DIR',
                 help='after running or reporting, copy the records of the finished runs '
                 '(config, metrics, run info, status; no checkpoints) to DIR/<variant>/seed<k>')
  p.add_argument('--metrics', default='', help='comma-separated regexes: print mean ± std '
                 'over seeds of the evaluator columns matching any (e.g. recall@,median_rank) '
                 'and exit; runs and writes nothing')
  args = p.parse_args(argv)
  if args.seeds < 1 or args.parallel < 1:
    p.error('--seeds and --parallel must be >= 1')
  args.metrics = [m for m in args.metrics.split(',') if m]
  for m in args.metrics:
    try:
      re.compile(m)
    except re.error as e:
      p.error(f'--metrics: {m!r}: {e}')
  return args


def main(argv: Sequence[str] | None = None) -> int:
  args = parse_args(argv)
  try:
    variants = load_sweep(args.sweep)
  except (FileNotFoundError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  chosen = variants
  if args.only:
    wanted = [n.strip() for n in args.only.split(',') if n.strip()]
    unknown = sorted(set(wanted) - {v.name for v in variants})
    if unknown:
      print(f'error: --only: unknown variants {unknown}; valid: {[v.name for v in variants]}',
            file=sys.stderr)
      return 2
    chosen = [v for v in variants if v.name in wanted]
  seeds = range(args.first_seed, args.first_seed + args.seeds)
  all_runs = plan(args.config, variants, seeds, args.root)
  runs = [r for r in all_runs if r.variant in chosen]
  if args.metrics:
    table = aggregate([collect_run(r) for r in runs], [v.name for v in chosen])
    print(evaluator_table(table, args.metrics) or
          f'no evaluator column of a finished run matches {",".join(args.metrics)}')
    return 0
  if args.dry_run:
    for r in runs:
      state = read_status(r.workdir).get('state', 'not started')
      print(f'# {r.variant.name} seed {r.seed} ({state})')
      for _, what in changed_runs([r]):
        print(f'# ... but its workdir holds another experiment: {what}')
      print(shlex.join(r.command))
    return 0
  if not args.report_only:
    if '://' in args.root:
      print(f'error: --root={args.root}: running needs a local directory (use --dry_run or '
            '--report_only for a gs:// root, or scripts/tpu_vm.py sweep)', file=sys.stderr)
      return 2
    changed = changed_runs(runs)
    if changed:
      print('error: these workdirs hold another experiment than the sweep plans there; move '
            'them away or use another --root:', file=sys.stderr)
      for run, what in changed:
        print(f'  {run.workdir}: {what}\n    now: {shlex.join(run.command)}', file=sys.stderr)
      return 2
    received = []
    handlers = {s: signal.signal(s, lambda n, f: (received.append(n), stop_runs(n)))
                for s in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)}
    try:
      run_all(runs, args.parallel)
    finally:
      for s, handler in handlers.items():
        signal.signal(s, handler)
      _stopping.clear()
    if received:
      print(f'stopped by {signal.Signals(received[0]).name}: the runs in progress were sent '
            'SIGTERM to save a checkpoint (those that did are "preempted"); the same command '
            'continues the sweep', file=sys.stderr)
      sys.stderr.flush()
      # Die of the signal, so a calling shell script (reproduce_results.sh) stops too.
      signal.signal(received[0], signal.SIG_DFL)
      os.kill(os.getpid(), received[0])
  text, rows = report(all_runs, args.root, [v.name for v in variants])  # the whole sweep
  print(text)
  print(f'results: {os.path.join(args.root, "results.md")}, results.csv, accuracy.png, '
        'validation_curves.png')
  if args.export_records:
    copied = export_records(all_runs, args.root, args.export_records)
    print(f'records of {copied} finished runs: {args.export_records}')
  mine = {r.workdir for r in runs}
  return 0 if all(r['status'] == 'done' for r in rows if r['workdir'] in mine) else 1


if __name__ == '__main__':
  sys.exit(main())
