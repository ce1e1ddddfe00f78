r"""Cloud TPU VM launcher: create a TPU VM (or pod slice), install this repo on every worker,
run an experiment or a sweep on all workers at once, stream logs, delete the VM.

  # everything, from a clean slate to a deleted VM (add --dry_run to print the commands only):
  python scripts/tpu_vm.py all --name=xm --zone=us-central2-b --accelerator=v4-32 \
      --config=experiments/avmnist.py:fusion=crossattn --workdir=gs://BUCKET/runs/crossattn \
      --data_dir=gs://BUCKET/tfds --prepare=pca

  # or step by step:
  python scripts/tpu_vm.py create  --name=xm --zone=... --accelerator=v4-32
  python scripts/tpu_vm.py setup   --name=xm --zone=...
  python scripts/tpu_vm.py run     --name=xm --zone=... --config=... --workdir=gs://... [-- --config.optim.lr=3e-4]
  python scripts/tpu_vm.py sweep   --name=xm --zone=... --config=... --sweep=experiments/sweeps/fusion.py --root=gs://... --seeds=3
  python scripts/tpu_vm.py logs    --name=xm --zone=...
  python scripts/tpu_vm.py delete  --name=xm --zone=...

How it works: `setup` copies `git archive HEAD` (the committed code, nothing else) to every
worker and installs it with JAX's TPU build into a Python 3.11 venv made by uv. `run` starts
the same `python -m crossmodal.main` command on all workers (`--worker=all`), detached from the
ssh session; each process calls `jax.distributed.initialize()`, which detects the slice, and
the run is data-parallel over every chip of
every host (`--distributed`); `-- --config.train.mesh=fsdp:<chips>` after the run's arguments
also shards the parameters and optimizer state over the chips (crossmodal/parallel.py). Workdirs and TFDS data dirs should be `gs://` paths, which the code reaches through
etils.epath / tf.io.gfile (metrics, config), Orbax (checkpoints) and TFDS (data); the dataset is
prepared once, on worker 0, before the run (`--prepare=<builder config>`), because every host
preparing the same shared data_dir at once would race. `all` polls worker 0 for the run's exit
code and deletes the VM only after the run has ended. `sweep` runs the sweep's commands one
after another on all workers, going on past a failed run; a sweep started again resumes each
unfinished run from its gs:// checkpoints, and `python scripts/ablate.py ... --root=gs://...
--report_only` collects the results.
"""
from __future__ import annotations

import argparse
import os
import shlex
import shutil
import subprocess
import sys
import time
from collections.abc import Sequence

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
REMOTE_DIR = 'crossmodal'
REMOTE_LOG = 'crossmodal_run.log'
REMOTE_EXIT = 'crossmodal_run.exit'  # exit code of the last `run`, written when it ends
# JAX's TPU build, pinned to the jax version in pyproject.toml (the extra pins libtpu).
JAX_TPU = 'jax[tpu]==0.10.2'
LIBTPU_INDEX = 'https://storage.googleapis.com/jax-releases/libtpu_releases.html'
# TPU VM software versions per generation (accelerator type prefix); override with --runtime.
RUNTIMES = {'v2': 'tpu-ubuntu2204-base', 'v3': 'tpu-ubuntu2204-base',
            'v4': 'tpu-ubuntu2204-base', 'v5litepod': 'v2-alpha-tpuv5-lite',
            'v5p': 'v2-alpha-tpuv5', 'v6e': 'v2-alpha-tpuv6e'}
POLL_SECONDS = 60


def _gcloud(args: argparse.Namespace, verb: str, *rest: str) -> list[str]:
  cmd = ['gcloud', 'compute', 'tpus', 'tpu-vm', verb, *rest, f'--zone={args.zone}']
  if args.project:
    cmd.append(f'--project={args.project}')
  return cmd


def _ssh(args: argparse.Namespace, command: str, worker: str = 'all') -> list[str]:
  return _gcloud(args, 'ssh', args.name, f'--worker={worker}', f'--command={command}')


def create_commands(args) -> list[list[str]]:
  runtime = args.runtime or RUNTIMES.get(args.accelerator.split('-')[0])
  if runtime is None:
    raise SystemExit(f'create: no default runtime for --accelerator={args.accelerator}; '
                     f'pass --runtime (known generations: {sorted(RUNTIMES)})')
  cmd = _gcloud(args, 'create', args.name, f'--accelerator-type={args.accelerator}',
                f'--version={runtime}')
  if args.spot:
    cmd.append('--spot')
  return [cmd]


def setup_commands(args) -> list[list[str]]:
  archive = '/tmp/crossmodal.tar.gz'
  install = ' && '.join([
      f'rm -rf {REMOTE_DIR} && mkdir -p {REMOTE_DIR}',
      f'tar -xzf crossmodal.tar.gz -C {REMOTE_DIR}',
      f'cd {REMOTE_DIR}',
      # TPU VM images ship Python 3.10; the project pins 3.11, which uv provides.
      'python3 -m pip install -q --user uv',
      '~/.local/bin/uv venv -q --python 3.11 .venv',
      f'~/.local/bin/uv pip install -q --python .venv/bin/python -e . {shlex.quote(JAX_TPU)} '
      f'-f {LIBTPU_INDEX}',
      '.venv/bin/python -c "import jax; print(jax.device_count(), jax.devices()[0].platform)"',
  ])
  return [
      ['git', '-C', REPO, 'archive', '--format=tar.gz', f'--output={archive}', 'HEAD'],
      _gcloud(args, 'scp', archive, f'{args.name}:crossmodal.tar.gz', '--worker=all'),
      _ssh(args, install),
  ]


def _prepare_command(args) -> list[list[str]]:
  if not args.prepare:
    return []
  configs = ' '.join(f'--config {shlex.quote(c)}' for c in args.prepare.split(','))
  data_dir = f' --data_dir {shlex.quote(args.data_dir)}' if args.data_dir else ''
  return [_ssh(args, f'cd {REMOTE_DIR} && .venv/bin/python scripts/prepare_data.py '
                     f'{configs}{data_dir}', worker='0')]


def _main_command(args, config: str, workdir: str, extra: Sequence[str]) -> str:
  parts = ['.venv/bin/python', '-m', 'crossmodal.main', '--distributed', f'--config={config}',
           f'--workdir={workdir}', *extra]
  if args.data_dir:
    parts.append(f'--config.data.data_dir={args.data_dir}')
  return shlex.join(parts)


def run_commands(args) -> list[list[str]]:
  """Starts the experiment on all workers, detached from the ssh session (an ssh drop must not
  kill training); `logs` follows worker 0, and the exit code lands in ~/crossmodal_run.exit."""
  if not args.config or not args.workdir:
    raise SystemExit('run: --config and --workdir are required')
  main = _main_command(args, args.config, args.workdir, args.extra)
  job = shlex.quote(f'cd {REMOTE_DIR} && {main} > ~/{REMOTE_LOG} 2>&1; '
                    f'echo $? > ~/{REMOTE_EXIT}')
  start = f'rm -f ~/{REMOTE_EXIT}; setsid nohup bash -c {job} < /dev/null > /dev/null 2>&1 &'
  return _prepare_command(args) + [_ssh(args, start)]


def poll_command(args) -> list[str]:
  """Prints worker 0's exit code once the run has ended, or 'running'."""
  return _ssh(args, f'cat ~/{REMOTE_EXIT} 2>/dev/null || echo running', worker='0')


def sweep_commands(args) -> list[list[str]]:
  """The sweep's runs, one after another, each on all workers (foreground)."""
  sys.path.insert(0, REPO)
  from crossmodal import ablate  # pylint: disable=g-import-not-at-top
  if not args.config or not args.sweep or not args.root:
    raise SystemExit('sweep: --config, --sweep and --root are required')
  variants = ablate.load_sweep(args.sweep)
  extra = ['--distributed', *args.extra]
  if args.data_dir:
    extra.append(f'--config.data.data_dir={args.data_dir}')
  runs = ablate.plan(args.config, variants, range(args.seeds), args.root,
                     python='.venv/bin/python', extra_args=extra)
  return _prepare_command(args) + [
      _ssh(args, f'cd {REMOTE_DIR} && {shlex.join(run.command)} >> ~/{REMOTE_LOG} 2>&1')
      for run in runs]


def logs_commands(args) -> list[list[str]]:
  return [_ssh(args, f'tail -n 200 -f ~/{REMOTE_LOG}', worker='0')]


def delete_commands(args) -> list[list[str]]:
  return [_gcloud(args, 'delete', args.name, '--quiet')]


STEPS = {'create': create_commands, 'setup': setup_commands, 'run': run_commands,
         'sweep': sweep_commands, 'logs': logs_commands, 'delete': delete_commands}


def commands_for(args) -> list[list[str]]:
  """The commands of an action. For 'all', the run is followed by polling (see `main`)."""
  if args.action == 'all':
    return (create_commands(args) + setup_commands(args) + run_commands(args)
            + [poll_command(args)] + delete_commands(args))
  return STEPS[args.action](args)


def wait_for_run(args) -> int:
  """Polls worker 0 until the run's exit code appears; ssh failures are retried, not fatal."""
  cmd = poll_command(args)
  while True:
    result = subprocess.run(cmd, capture_output=True, text=True, check=False)
    answer = result.stdout.strip().splitlines()[-1:] if result.returncode == 0 else []
    if answer and answer[0].lstrip('-').isdigit():
      return int(answer[0])
    time.sleep(POLL_SECONDS)


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
  argv = list(sys.argv[1:] if argv is None else argv)
  extra = []
  if '--' in argv:  # everything after -- goes to crossmodal.main unchanged
    extra = argv[argv.index('--') + 1:]
    argv = argv[:argv.index('--')]
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('action', choices=[*STEPS, 'all'])
  p.add_argument('--name', required=True, help='TPU VM name')
  p.add_argument('--zone', required=True)
  p.add_argument('--project', default=None)
  p.add_argument('--accelerator', default='v4-8', help='e.g. v4-8, v4-32, v5litepod-16')
  p.add_argument('--runtime', default=None,
                 help='TPU VM software version (default: by generation, see RUNTIMES)')
  p.add_argument('--spot', action='store_true', help='spot VM (preemptible: SIGTERM saves)')
  p.add_argument('--config', default=None, help='path[:preset], relative to the repo')
  p.add_argument('--workdir', default=None, help='gs://... workdir for run')
  p.add_argument('--data_dir', default=None, help='gs://... TFDS data_dir')
  p.add_argument('--prepare', default=None,
                 help='comma-separated builder configs to prepare on worker 0 before running')
  p.add_argument('--sweep', default=None, help='sweep file (sweep action)')
  p.add_argument('--root', default=None, help='gs://... root for the sweep runs')
  p.add_argument('--seeds', type=int, default=3)
  p.add_argument('--dry_run', action='store_true', help='print the commands, run nothing')
  args = p.parse_args(argv)
  args.extra = extra
  for key in ('workdir', 'data_dir', 'root'):
    value = getattr(args, key)
    if value and not value.startswith('gs://'):
      print(f'warning: --{key}={value} is not a gs:// path; each TPU host would write its own '
            'local copy', file=sys.stderr)
  return args


def main(argv: Sequence[str] | None = None) -> int:
  args = parse_args(argv)
  commands = commands_for(args)
  if args.dry_run:
    for cmd in commands:
      print(shlex.join(cmd))
    return 0
  if shutil.which('gcloud') is None:
    print('error: gcloud is not installed or not on PATH (https://cloud.google.com/sdk); '
          'use --dry_run to print the commands', file=sys.stderr)
    return 2
  poll, delete = poll_command(args), delete_commands(args)[0]
  failures = 0
  for i, cmd in enumerate(commands):
    print('+', shlex.join(cmd), flush=True)
    if cmd == poll:  # 'all': wait for the run to end before deleting the VM
      code = wait_for_run(args)
      print(f'run ended with exit code {code}; log: ~/{REMOTE_LOG} on worker 0', flush=True)
      failures += code != 0
      continue
    returncode = subprocess.run(cmd, check=False).returncode
    if not returncode:
      continue
    print(f'error: exit code {returncode}: {shlex.join(cmd)}', file=sys.stderr)
    failures += 1
    if args.action == 'sweep':
      continue  # the next run does not depend on this one; failures are reported at the end
    if args.action == 'all' and i > 0 and delete in commands[i + 1:]:
      print('+', shlex.join(delete), flush=True)  # don't leave a VM running (and billing)
      subprocess.run(delete, check=False)
    return returncode
  if failures:
    print(f'error: {failures} command(s) failed', file=sys.stderr)
  return 1 if failures else 0


if __name__ == '__main__':
  sys.exit(main())
