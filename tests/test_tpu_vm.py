"""The TPU VM launcher's dry-run mode: the exact gcloud commands, nothing executed."""
import os
import shlex

import pytest

from crossmodal import config_utils
from conftest import REPO


@pytest.fixture(scope='module')
def tpu_vm():
  return config_utils.load_module(os.path.join(REPO, 'scripts', 'tpu_vm.py'), 'tpu_vm')


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
  assert verbs == ['create', 'git', 'scp', 'ssh', 'ssh', 'ssh', 'ssh', 'delete']
  assert all('--zone=us-central2-b' in c and '--project=p' in c for c in cmds if c[0] == 'gcloud')
  assert '--accelerator-type=v4-32' in cmds[0] and '--version=tpu-ubuntu2204-base' in cmds[0]
  assert cmds[1][-1] == 'HEAD'  # only committed code goes to the VM
  assert '--worker=all' in cmds[2] and '--worker=all' in cmds[3]
  assert "'jax[tpu]==0.10.2'" in remote(cmds[3]) and '--python 3.11' in remote(cmds[3])
  prepare, run, poll = remote(cmds[4]), remote(cmds[5]), remote(cmds[6])
  assert '--worker=0' in cmds[4]
  assert 'prepare_data.py --config pca --data_dir gs://b/tfds' in prepare
  assert '--worker=all' in cmds[5]
  # Detached from ssh (an ssh drop must not kill training), exit code written when it ends.
  assert run.startswith('rm -f ~/crossmodal_run.exit; setsid nohup bash -c ')
  job = shlex.split(run.split('bash -c ', 1)[1])[0]
  main = shlex.split(job.split('&&', 1)[1].split('>', 1)[0])
  assert main == ['.venv/bin/python', '-m', 'crossmodal.main', '--distributed',
                  '--config=experiments/avmnist.py:fusion=crossattn', '--workdir=gs://b/runs/x',
                  '--config.optim.lr=3e-4', '--config.data.data_dir=gs://b/tfds']
  assert job.endswith('echo $? > ~/crossmodal_run.exit')
  assert '--worker=0' in cmds[6] and 'crossmodal_run.exit' in poll
  assert cmds[7][5] == 'xm'


def test_runtime_follows_the_accelerator_generation(tpu_vm, capsys):
  create, = dry_run(tpu_vm, capsys, 'create', '--name=xm', '--zone=z',
                    '--accelerator=v5litepod-16')
  assert '--version=v2-alpha-tpuv5-lite' in create
  create, = dry_run(tpu_vm, capsys, 'create', '--name=xm', '--zone=z', '--accelerator=v9-8',
                    '--runtime=custom')
  assert '--version=custom' in create
  with pytest.raises(SystemExit, match='no default runtime'):
    tpu_vm.main(['create', '--dry_run', '--name=xm', '--zone=z', '--accelerator=v9-8'])


def test_logs_follow_worker_0(tpu_vm, capsys):
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


FAKE_GCLOUD = r'''#!/bin/sh
# Records each call; the run-exit poll answers 'running' once, then 3; ssh with FAIL fails.
echo "$*" >> "$CALLS"
case "$*" in
  *crossmodal_run.exit\ 2*) n=$(grep -c 'cat ~/crossmodal_run.exit' "$CALLS");
                            if [ "$n" -lt 2 ]; then echo running; else echo 3; fi ;;
  *FAIL*) exit 7 ;;
esac
exit 0
'''


@pytest.fixture
def fake_gcloud(tmp_path, monkeypatch, tpu_vm):
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  (bin_dir / 'gcloud').write_text(FAKE_GCLOUD)
  (bin_dir / 'gcloud').chmod(0o755)
  (bin_dir / 'git').write_text('#!/bin/sh\nexit 0\n')  # no archive needed
  (bin_dir / 'git').chmod(0o755)
  monkeypatch.setenv('PATH', f'{bin_dir}:/usr/bin:/bin')
  monkeypatch.setenv('CALLS', str(tmp_path / 'calls'))
  monkeypatch.setattr(tpu_vm, 'POLL_SECONDS', 0)
  return tmp_path / 'calls'


def test_all_waits_for_the_run_then_deletes_and_reports_its_exit_code(tpu_vm, fake_gcloud):
  code = tpu_vm.main(['all', '--name=xm', '--zone=z', '--config=experiments/synthetic.py',
                      '--workdir=gs://b/w'])
  calls = fake_gcloud.read_text().splitlines()
  assert code == 1  # the run ended with exit code 3
  assert sum('crossmodal_run.exit 2>' in c for c in calls) == 2  # polled until it ended
  assert calls[-1].startswith('compute tpus tpu-vm delete xm')


def test_all_deletes_the_vm_when_starting_the_run_fails(tpu_vm, fake_gcloud):
  code = tpu_vm.main(['all', '--name=xm', '--zone=z', '--config=experiments/synthetic.py',
                      '--workdir=gs://b/FAIL'])
  calls = fake_gcloud.read_text().splitlines()
  assert code == 7 and calls[-1].startswith('compute tpus tpu-vm delete xm')


def test_sweep_goes_on_after_a_failed_run(tpu_vm, fake_gcloud):
  sweep = os.path.join(REPO, 'experiments', 'sweeps', 'bottleneck.py')
  code = tpu_vm.main(['sweep', '--name=xm', '--zone=z', '--config=experiments/avmnist.py',
                      f'--sweep={sweep}', '--root=gs://b/FAIL', '--seeds=1'])
  assert code == 1 and len(fake_gcloud.read_text().splitlines()) == 6  # all six runs tried
