"""The TPU VM launcher's dry-run mode: the exact gcloud commands, nothing executed."""
import importlib.util
import os
import shlex

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@pytest.fixture(scope='module')
def tpu_vm():
  spec = importlib.util.spec_from_file_location('tpu_vm', os.path.join(REPO, 'scripts',
                                                                      'tpu_vm.py'))
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


def dry_run(tpu_vm, capsys, action, *argv):
  assert tpu_vm.main([action, '--dry_run', *argv]) == 0
  return [shlex.split(line) for line in capsys.readouterr().out.splitlines()]


def remote(cmd):
  """The shell command a `gcloud ... ssh` runs on the workers."""
  return next(a.split('=', 1)[1] for a in cmd if a.startswith('--command='))


def test_all_creates_sets_up_runs_on_every_worker_and_deletes(tpu_vm, capsys):
  cmds = dry_run(tpu_vm, capsys, 'all', '--name=xm', '--zone=us-central2-b', '--project=p',
                 '--accelerator=v4-32', '--config=experiments/avmnist.py:fusion=crossattn',
                 '--workdir=gs://b/runs/x', '--data_dir=gs://b/tfds', '--prepare=pca',
                 '--', '--config.optim.lr=3e-4')
  verbs = [c[4] if c[0] == 'gcloud' else c[0] for c in cmds]
  assert verbs == ['create', 'git', 'scp', 'ssh', 'ssh', 'ssh', 'delete']
  assert all('--zone=us-central2-b' in c and '--project=p' in c for c in cmds if c[0] == 'gcloud')
  assert '--accelerator-type=v4-32' in cmds[0]
  assert cmds[1][-1] == 'HEAD'  # only committed code goes to the VM
  assert '--worker=all' in cmds[2] and '--worker=all' in cmds[3]
  assert 'jax[tpu]==0.10.2' in remote(cmds[3])
  prepare, run = remote(cmds[4]), remote(cmds[5])
  assert '--worker=0' in cmds[4] and 'prepare_data.py --config pca --data_dir gs://b/tfds' in prepare
  assert '--worker=all' in cmds[5]
  main = shlex.split(run.split('&&')[-1].split('2>&1')[0])
  assert main == ['.venv/bin/python', '-m', 'crossmodal.main',
                  '--config=experiments/avmnist.py:fusion=crossattn', '--workdir=gs://b/runs/x',
                  '--config.optim.lr=3e-4', '--config.data.data_dir=gs://b/tfds']
  assert 'pipefail' in run and cmds[6][5] == 'xm'


def test_run_is_in_the_background_and_logs_follow_worker_0(tpu_vm, capsys):
  run, = dry_run(tpu_vm, capsys, 'run', '--name=xm', '--zone=z',
                 '--config=experiments/synthetic.py', '--workdir=gs://b/w')
  assert remote(run).startswith('cd crossmodal && nohup ') and remote(run).endswith('&')
  logs, = dry_run(tpu_vm, capsys, 'logs', '--name=xm', '--zone=z')
  assert '--worker=0' in logs and 'tail' in remote(logs)


def test_sweep_runs_each_variant_and_seed_on_all_workers(tpu_vm, capsys):
  cmds = dry_run(tpu_vm, capsys, 'sweep', '--name=xm', '--zone=z',
                 '--config=experiments/avmnist.py', f'--sweep={REPO}/experiments/sweeps/bottleneck.py',
                 '--root=gs://b/sweep', '--seeds=2')
  assert len(cmds) == 6 * 2 and all('--worker=all' in c for c in cmds)
  first = remote(cmds[0])
  assert '--workdir=gs://b/sweep/early_fusion_layer0/seed0' in first
  assert '--config.model.fusion.fusion_layer=0' in first and '--config.seed=0' in first
  assert '--workdir=gs://b/sweep/mid_16_bottlenecks/seed1' in remote(cmds[-3])


def test_missing_arguments_and_gcloud_are_reported(tpu_vm, capsys, monkeypatch):
  with pytest.raises(SystemExit, match='--config and --workdir are required'):
    tpu_vm.main(['run', '--name=xm', '--zone=z', '--dry_run'])
  monkeypatch.setenv('PATH', '/nonexistent')
  assert tpu_vm.main(['delete', '--name=xm', '--zone=z']) == 2
  assert 'gcloud is not installed' in capsys.readouterr().err
