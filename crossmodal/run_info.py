"""`<workdir>/run_info.json`: what ran, beside what it computed (config.json, metrics.jsonl).

Parameter counts per part (what a study compares besides accuracy), the devices, and the
code's provenance: the git commit and dirtiness of this checkout, the versions of the
libraries that decide the numbers, and the host CPU (XLA's CPU code and NumPy's BLAS depend
on it). Rewritten on every start of a run, so it describes the latest attempt. Importing this
module needs no JAX (the sweep runner reads the file name from here).
"""
from __future__ import annotations

import importlib.metadata
import json
import os
import platform
import subprocess
from typing import Any

from crossmodal import files

RUN_INFO = 'run_info.json'
_LIBRARIES = ('jax', 'jaxlib', 'flax', 'optax', 'orbax-checkpoint')


def code_version() -> dict[str, Any]:
  """The code a run used: the git commit of this checkout (None outside one), whether it had
  uncommitted changes or untracked files (ignored ones aside), and the versions of the
  libraries that decide the numbers (None if one is not installed)."""
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
          **{name: version(name) for name in _LIBRARIES}}


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


def write(workdir: str, params: Any, parallel: str, frozen: tuple[str, ...] = (),
          trunks: dict[str, Any] | None = None, data: dict[str, Any] | None = None) -> None:
  """Writes run_info.json for a run whose parameters are `params` (a pytree); `frozen`:
  config.train.frozen (the counts of frozen and trainable parameters); `trunks`: the conv
  stages each LeNet encoder runs (CrossModalModel.trunks); `data`: the dataset and its content
  fingerprint (datasets.fingerprint), so two runs can tell whether they read the same bytes."""
  import jax  # pylint: disable=g-import-not-at-top
  from crossmodal import transfer  # pylint: disable=g-import-not-at-top
  from crossmodal.models import model as model_lib  # pylint: disable=g-import-not-at-top
  info = {'num_params': model_lib.count_params(params),
          'params_by_part': model_lib.param_counts_by_part(params),
          'params_frozen_trainable': transfer.counts(params, frozen),
          'device_count': jax.device_count(), 'process_count': jax.process_count(),
          'backend': jax.default_backend(), 'device_kind': jax.devices()[0].device_kind,
          'host_cpu': host_cpu(), 'parallel': parallel, 'code': code_version()}
  if trunks:
    info['trunks'] = trunks
  if data:
    info['data'] = data
  files.write_file(os.path.join(workdir, RUN_INFO), json.dumps(info, indent=2) + '\n')
