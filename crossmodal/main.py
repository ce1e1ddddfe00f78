r"""Entry point: train and/or evaluate an experiment config in a workdir.

  python -m crossmodal.main --config=experiments/avmnist.py:fusion=crossattn \
      --workdir=runs/avmnist_crossattn --config.optim.lr=3e-4 --mode=train_and_eval

--config takes `path[:arg]`; the part after ':' goes to the file's get_config(arg) (presets).
Any field can then be overridden with --config.<dotted.path>=value. A wrong key, a value of the
wrong type or out of range stops here, before data, model or compile, naming the valid choices.
A type can be switched too, with the new type's fields overridable on the same command line:
--config.model.fusion.type=crossattn --config.model.fusion.num_layers=3 (config_utils.switch_type
says what happens to the old type's fields).

Modes: train (the loop, with periodic evaluation), eval (evaluate --checkpoint=latest|best|<step>
of the workdir), train_and_eval (train, then run every evaluator on the --checkpoint, by
default the best by `config.train.best_metric`).
Starting again on the same workdir resumes from its latest checkpoint.

Multi-host: --distributed on a Cloud TPU VM slice (or Slurm / Open MPI), where JAX detects the
cluster; elsewhere --num_processes/--process_id/--coordinator_address (or the JAX_* environment
variables).
"""
from __future__ import annotations

import json
import sys
from typing import Sequence

from absl import app
from absl import flags
from absl import logging
import ml_collections
from ml_collections import config_flags

from crossmodal import config_utils
from crossmodal import logs

MODES = ('train', 'eval', 'train_and_eval')
PREEMPTED_EXIT_CODE = 75  # EX_TEMPFAIL: stopped by SIGTERM after saving; run again to resume

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Experiment config file, `path[:arg]` (arg goes to get_config).',
    lock_config=True)


class _TypeSwitchingParser:
  """--config's parser: config_flags' loader, then the command line's type switches
  (config_utils.switch_types) applied to the loaded, locked config before config_flags types
  the other overrides against it, so that the new type's own fields exist and can be
  overridden too. Reads the overrides where config_flags does: sys.argv, flag files expanded."""

  def __init__(self, loader):
    self._loader = loader

  def parse(self, path):
    config = self._loader.parse(path)
    if isinstance(config, ml_collections.ConfigDict):
      argv = flags.FLAGS.read_flags_from_files(sys.argv, force_gnu=False)
      config_utils.switch_types(config, config_utils.command_line_overrides(argv))
    return config

  def __getattr__(self, name):  # flag_type, help text, ...: the loader's
    return getattr(self._loader, name)


flags.FLAGS['config'].parser = _TypeSwitchingParser(flags.FLAGS['config'].parser)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics, config.')
_MODE = flags.DEFINE_enum('mode', 'train_and_eval', MODES, 'What to run.')
_CHECKPOINT = flags.DEFINE_string(
    'checkpoint', 'best', "eval mode: which checkpoint, 'latest', 'best' or a step number.")
_COORDINATOR = flags.DEFINE_string(
    'coordinator_address', None, 'Multi-process: host:port of process 0 (jax.distributed).')
_NUM_PROCESSES = flags.DEFINE_integer('num_processes', None, 'Multi-process: process count.')
_PROCESS_ID = flags.DEFINE_integer('process_id', None, 'Multi-process: this process index.')
_DISTRIBUTED = flags.DEFINE_bool(
    'distributed', False, 'Multi-process with auto-detected settings: jax.distributed.initialize() '
    'with no arguments (Cloud TPU VM slices, Slurm, Open MPI).')
flags.mark_flags_as_required(['config', 'workdir'])

SYNTHETIC_COMMAND = ('python -m crossmodal.main --config=experiments/synthetic.py '
                     '--workdir=runs/synthetic')


def _fail(message: str) -> None:
  print(f'error: {message}', file=sys.stderr)
  sys.exit(2)


def parse_flags(argv: Sequence[str]) -> list[str]:
  """absl parsing with readable config errors (unknown override keys list the valid ones),
  type switches included (_TypeSwitchingParser)."""
  try:
    return flags.FLAGS(argv)
  except Exception as e:  # pylint: disable=broad-except
    cause = e
    while cause is not None and not isinstance(cause, config_utils.ConfigError):
      cause = cause.__cause__ or cause.__context__  # absl wraps what the parser raised
    if cause is not None:
      _fail(str(cause))
    spec = next((a.split('=', 1)[1] for a in argv[1:] if a.startswith('--config=')), None)
    overrides = config_utils.command_line_overrides(argv[1:])
    if spec is not None:
      try:
        config = config_utils.load_config_file(spec)
      except config_utils.ConfigError as load_error:
        _fail(f'--config={spec}: {load_error}')
      except Exception:  # pylint: disable=broad-except
        config = None  # The original error below says what is wrong with the file.
      if config is not None:
        try:
          config_utils.switch_types(config, overrides)
          config_utils.check_overrides(config, overrides)
        except config_utils.ConfigError as key_error:
          _fail(str(key_error))
    message = str(e.args[0]) if isinstance(e, KeyError) and e.args else str(e)
    _fail(f'{message}\nRun with --helpfull for all flags.')
  return []  # unreachable


def _data_missing_help(config, error: Exception | str) -> str:
  from crossmodal.data import sources  # pylint: disable=g-import-not-at-top
  return (
      f'{error}\n\n'
      f'The {config.data.name!r} data is not available on this machine and cannot be '
      'downloaded. Either put the raw sources at '
      f'{sources.default_shared_dir()} (or any directory given by --config.data.manual_dir=DIR '
      f'or ${sources.ENV_VAR}) in this layout:\n  {sources.LAYOUT_HELP}\n'
      'or try the pipeline without any data with the synthetic config:\n'
      f'  {SYNTHETIC_COMMAND}')


def main(argv: Sequence[str]) -> None:
  logs.quiet_libraries(logging.get_verbosity())  # libraries' INFO lines only with --verbosity=1
  if len(argv) > 1:
    _fail(f'unexpected arguments {list(argv[1:])}; options are --flag=value')
  # jax is imported only now: initialize_distributed must precede any other JAX call.
  from crossmodal import parallel  # pylint: disable=g-import-not-at-top
  parallel.initialize_distributed(_COORDINATOR.value, _NUM_PROCESSES.value, _PROCESS_ID.value,
                                  auto_detect=_DISTRIBUTED.value)
  import jax  # pylint: disable=g-import-not-at-top
  from crossmodal import checkpointing  # pylint: disable=g-import-not-at-top
  from crossmodal import train  # pylint: disable=g-import-not-at-top
  from crossmodal.data import sources  # pylint: disable=g-import-not-at-top
  try:
    config = _CONFIG.value
  except OSError as e:  # config_flags defers "cannot load the config file" to first use
    _fail(str(e))
  workdir, which, mode = _WORKDIR.value, _CHECKPOINT.value, _MODE.value
  checkpoint = int(which) if which.isdigit() else which
  if checkpoint not in ('latest', 'best') and not isinstance(checkpoint, int):
    _fail(f"--checkpoint={which!r}; valid choices: 'latest', 'best' or a step number")
  if which == 'best' and not (config.get('train') or {}).get('best_metric', True):
    which = 'latest'  # no best is kept ('' ranks nothing): 'best' means the latest
  logging.info('workdir %s, mode %s, %d devices over %d processes', workdir, mode,
               jax.device_count(), jax.process_count())
  try:
    if mode == 'eval':
      _report(f'evaluated the {which} checkpoint', train.evaluate(config, workdir, checkpoint))
      return
    # Checks the config before anything is built, then trains (and, in train_and_eval,
    # evaluates the chosen checkpoint with every evaluator).
    result = train.train_and_evaluate(
        config, workdir, final_checkpoint=checkpoint if mode == 'train_and_eval' else None)
  except sources.SourceError as e:
    _fail(_data_missing_help(config, e))
  except (config_utils.ConfigError, checkpointing.WorkdirLockedError,
          train.NonFiniteLossError) as e:
    _fail(str(e))
  except FileNotFoundError as e:
    if mode == 'eval':
      _fail(f'{e}\nTrain first: --mode=train_and_eval with the same --workdir.')
    raise
  if result.preempted:
    print(f'preempted: saved step {result.step} in {workdir}; run the same command again '
          'to resume', flush=True)
    sys.exit(PREEMPTED_EXIT_CODE)
  _report(f'trained to step {result.step}', result.metrics)
  if mode == 'train_and_eval':
    _report(f'evaluated the {which} checkpoint', result.final)


def _report(what: str, metrics: dict) -> None:
  """One readable summary line per split on the console (details are in metrics.jsonl)."""
  logging.info('%s', what)
  for split, m in metrics.items():
    summary = {k: round(v, 4) if isinstance(v, float) else v for k, v in m.items()
               if (isinstance(v, (int, float)) and not isinstance(v, bool)) or k == 'picture'}
    print(f'{what}: {split}: {json.dumps(summary)}', flush=True)


def run() -> None:
  app.run(main, flags_parser=parse_flags)


if __name__ == '__main__':
  run()
