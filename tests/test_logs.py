"""The console shows the run's own progress; libraries' INFO lines only with --verbosity=1."""
import logging
import os
import subprocess
import sys

import pytest

from crossmodal import logs
from conftest import REPO, SYNTHETIC

ORBAX_SAVE_LINE = 'Saving checkpoint at step'  # orbax checkpoint_manager.py, INFO, every save


def _record(path, level, msg, *args):
  return logging.LogRecord('absl', level, path, 1, msg, args, None)


def test_filter_keeps_own_lines_and_library_warnings_only():
  own = os.path.join(os.path.dirname(logs.__file__), 'train.py')
  orbax = os.path.join('site-packages', 'orbax', 'checkpoint', 'checkpoint_manager.py')
  tfds = os.path.join('site-packages', 'tensorflow_datasets', 'core', 'dataset_builder.py')
  keep = logs.LibraryFilter().filter
  assert keep(_record(own, logging.INFO, '[%s] step %d: %s', 'train', 4, 'loss=1'))
  assert keep(_record(own, logging.DEBUG, 'debug from crossmodal'))
  assert not keep(_record(orbax, logging.INFO, 'Saving checkpoint at step %d', 4))
  assert not keep(_record(tfds, logging.DEBUG, 'Load dataset info from %s', '/x'))
  assert keep(_record(orbax, logging.WARNING, 'something unexpected'))
  assert keep(_record(tfds, logging.ERROR, 'Failed'))
  assert not keep(_record(tfds, logging.WARNING, 'Using custom data configuration: %s', 'c'))
  assert not keep(_record(orbax, logging.WARNING,
                          'Requested `tracked_metric`; did not provide metrics.'))
  # An expected warning's text from elsewhere is not dropped.
  assert keep(_record(own, logging.WARNING, 'Using custom data configuration: %s', 'c'))


def _run(workdir, *flags, env=None):
  r = subprocess.run(
      [sys.executable, '-m', 'crossmodal.main', f'--config={SYNTHETIC}:size=tiny,steps=4',
       f'--workdir={workdir}', *flags],
      cwd=REPO, capture_output=True, text=True, timeout=600, env=env)
  assert r.returncode == 0, r.stderr[-3000:]
  return r.stdout + r.stderr


@pytest.mark.slow
def test_orbax_save_lines_only_with_verbosity_1(tmp_path):
  # Both runs train the same model: the second loads its XLA programs from the first's
  # persistent compilation cache (as test_ablate's runs do) instead of compiling them again.
  env = {**os.environ, 'JAX_COMPILATION_CACHE_DIR': str(tmp_path / 'jax_cache'),
         'JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS': '0'}
  console = _run(tmp_path / 'quiet', env=env)
  assert ORBAX_SAVE_LINE not in console, console
  assert 'checkpoint_manager.py' not in console, console
  for own in ('main.py', 'metrics.py', '[train] step 4:', '[validation] step 4:',
              'trained to step 4: test:', 'evaluated the best checkpoint: test:'):
    assert own in console, (own, console)
  verbose = _run(tmp_path / 'verbose', '--verbosity=1', env=env)
  assert ORBAX_SAVE_LINE in verbose
  assert '[train] step 4:' in verbose and 'trained to step 4: test:' in verbose
