"""The sweep runner on tiny synthetic runs: dry run, results, failures, skip and resume."""
import csv
import dataclasses
import json
import os
import shutil
import signal
import subprocess
import sys
import textwrap
import time

import pytest

from crossmodal import ablate
from crossmodal import files
from conftest import REPO, SYNTHETIC

CONFIG = f'{SYNTHETIC}:size=tiny'

SWEEP = textwrap.dedent('''
    from crossmodal.ablate import Variant

    def get_sweep():
      return [
          Variant('concat', 'fusion=concat'),
          # A key concat does not have: main refuses it before building anything.
          Variant('broken', 'fusion=concat', {'model.fusion.num_layers': 3}),
          Variant('sum', 'fusion=sum', {'optim.lr': 0.01}),
      ]
''')


@pytest.fixture
def sweep_file(tmp_path, monkeypatch):
  monkeypatch.setenv('JAX_COMPILATION_CACHE_DIR', str(tmp_path / 'jax_cache'))
  monkeypatch.setenv('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0')
  path = tmp_path / 'sweep.py'
  path.write_text(SWEEP)
  return str(path)


def test_dry_run_prints_every_command_and_runs_nothing(sweep_file, tmp_path, capsys):
  root = tmp_path / 'root'
  assert ablate.main([f'--config={CONFIG}', f'--sweep={sweep_file}', f'--root={root}',
                      '--seeds=2', '--dry_run']) == 0
  out = capsys.readouterr().out
  commands = [l for l in out.splitlines() if not l.startswith('#')]
  assert len(commands) == 6
  assert f'--config={SYNTHETIC}:size=tiny,fusion=sum' in commands[-1]
  assert '--config.seed=1' in commands[-1] and '--config.optim.lr=0.01' in commands[-1]
  assert f'--workdir={root}/sum/seed1' in commands[-1]
  assert not root.exists()


def test_bad_sweep_files_are_reported(tmp_path, capsys):
  bad = tmp_path / 'bad.py'
  bad.write_text('from crossmodal.ablate import Variant\n'
                 'def get_sweep():\n  return [Variant("a"), Variant("a")]\n')
  assert ablate.main([f'--config={CONFIG}', f'--sweep={bad}', f'--root={tmp_path}']) == 2
  assert "duplicate variant names ['a']" in capsys.readouterr().err
  assert ablate.main([f'--config={CONFIG}', f'--sweep={tmp_path}/none.py',
                      f'--root={tmp_path}']) == 2
  assert 'does not exist' in capsys.readouterr().err


@pytest.mark.slow
def test_sweep_runs_reports_failures_skips_and_resumes(sweep_file, tmp_path, capsys):
  root = str(tmp_path / 'root')
  args = [f'--config={CONFIG}', f'--sweep={sweep_file}', f'--root={root}', '--seeds=2']
  # An interrupted run: 'sum' seed 0 is SIGKILLed after step 8 (as if the machine died).
  runs = ablate.plan(CONFIG, ablate.load_sweep(sweep_file), [0, 1], root)
  sum0 = next(r for r in runs if r.variant.name == 'sum' and r.seed == 0)
  interrupted = dataclasses.replace(sum0, command=(  # tests/interrupt_at_step.py
      sys.executable, os.path.join(REPO, 'tests', 'interrupt_at_step.py'), '8', 'SIGKILL',
      *sum0.command[3:]))
  status = ablate.execute(interrupted)
  assert status['state'] == 'failed' and status['error'] == 'killed by signal 9'

  assert ablate.main(args) == 1  # 'broken' fails, so the sweep reports failure
  out = capsys.readouterr().out
  assert '[resume] sum seed 0' in out and '[start] concat seed 0' in out
  with open(os.path.join(sum0.workdir, ablate.LOG)) as f:
    assert 'resumed from' in f.read().rsplit('===== attempt', 1)[-1]
  assert ablate.read_status(sum0.workdir)['attempts'] == 2

  with open(os.path.join(root, 'results.csv')) as f:
    rows = list(csv.DictReader(f))
  assert [(r['variant'], r['seed'], r['status']) for r in rows] == [
      ('concat', '0', 'done'), ('concat', '1', 'done'), ('broken', '0', 'failed'),
      ('broken', '1', 'failed'), ('sum', '0', 'done'), ('sum', '1', 'done')]
  for r in rows:
    if r['status'] == 'done':
      assert 0 <= float(r['test_accuracy']) <= 1 and int(r['num_params']) > 0
      assert float(r['examples_per_sec']) > 0 and float(r['wall_time_s']) > 0
      info = json.load(open(os.path.join(r['workdir'], 'run_info.json')))
      assert info['device_kind'] and info['host_cpu']  # numbers depend on the hardware
      commit = info['code']['git_commit']  # None outside a git checkout
      assert r['code'] == (commit[:12] + '+dirty' * info['code']['git_dirty'] if commit else '')
    else:
      assert 'num_layers' in r['error'], r['error']  # main's message names the bad key
  table = open(os.path.join(root, 'results.md')).read()
  assert '| broken | - |' in table and '0/2 (seed 0 failed:' in table
  mean = sum(float(r['test_accuracy']) for r in rows[:2]) / 2
  assert f'{100 * mean:.2f} ±' in table.split('concat')[1].split('\n')[0]
  assert table.count('(best)') == 1
  for png in ('accuracy.png', 'validation_curves.png'):
    assert os.path.getsize(os.path.join(root, png)) > 1000

  # A run started from the printed commands (no status file) counts once it has eval_test.
  os.remove(os.path.join(root, 'concat', 'seed1', ablate.STATUS))
  assert ablate.collect_run(runs[1])['status'] == 'done'
  os.remove(os.path.join(root, 'concat', 'seed1', 'metrics.jsonl'))
  assert ablate.collect_run(runs[1])['status'] == 'not started'

  # Started again: finished runs are skipped (not re-run), failed ones are retried.
  assert ablate.main(args) == 1
  out = capsys.readouterr().out
  assert out.count('[skip]') == 3 and '[resume] broken seed 0' in out
  assert '[start] concat seed 1' in out  # its results were removed above: run again
  assert ablate.read_status(sum0.workdir)['attempts'] == 2

  # The finished runs' records, exported and copied under a new root (another machine):
  # the runner skips them and reports the same numbers; nothing but the records travels.
  records = str(tmp_path / 'records')
  assert ablate.main(args + ['--report_only', f'--export_records={records}']) == 1
  assert 'records of 4 finished runs' in capsys.readouterr().out
  assert sorted(os.listdir(os.path.join(records, 'sum', 'seed0'))) == sorted(ablate.RECORDS)
  assert not os.path.exists(os.path.join(records, 'broken'))  # failed: nothing to keep
  with open(os.path.join(root, 'results.csv')) as f:
    before = list(csv.DictReader(f))
  moved = str(tmp_path / 'moved')
  shutil.copytree(records, moved)
  assert ablate.main([a.replace(root, moved) for a in args]) == 1  # 'broken' still fails
  out = capsys.readouterr().out
  assert out.count('[skip]') == 4 and '[start] broken seed 0' in out
  with open(os.path.join(moved, 'results.csv')) as f:
    again = list(csv.DictReader(f))
  assert [(r['variant'], r['seed'], r['status'], r['test_accuracy']) for r in again] == [
      (r['variant'], r['seed'], r['status'], r['test_accuracy']) for r in before]


def test_aggregate_and_table_on_hand_made_rows():
  rows = [
      {'variant': 'a', 'seed': 0, 'status': 'done', 'error': None, 'test_accuracy': 0.5,
       'test_macro_f1': 0.4, 'final_test_accuracy': 0.5, 'best_validation_accuracy': 0.6,
       'num_params': 10,
       'examples_per_sec': 100.0, 'wall_time_s': 10.0},
      {'variant': 'a', 'seed': 1, 'status': 'done', 'error': None, 'test_accuracy': 0.7,
       'test_macro_f1': 0.6, 'final_test_accuracy': 0.7, 'best_validation_accuracy': 0.8,
       'num_params': 10,
       'examples_per_sec': 300.0, 'wall_time_s': 30.0},
      {'variant': 'b', 'seed': 0, 'status': 'failed', 'error': 'boom', 'test_accuracy': None,
       'test_macro_f1': None, 'final_test_accuracy': None, 'best_validation_accuracy': None,
       'num_params': None,
       'examples_per_sec': None, 'wall_time_s': 1.0},
  ]
  table = ablate.aggregate(rows, ['a', 'b'])
  mean, std = table[0]['test_accuracy']
  assert mean == pytest.approx(0.6) and std == pytest.approx(0.1414213, abs=1e-6)  # ddof=1
  assert table[1]['failures'] == [(0, 'failed', 'boom')] and table[1]['test_accuracy'] is None
  text = ablate.markdown_table(table)
  assert ('| **a** (best) | 60.00 ± 14.14 | 50.00 ± 14.14 | 60.00 ± 14.14 | 70.00 ± 14.14 | 10 '
          '| 200 ± 141 | 20 ± 14 | 2/2 |') in text
  assert '| b | - | - | - | - | - | - | - | 0/1 (seed 0 failed: boom) |' in text
  # One finished seed: no '± 0.00' pretending to be a spread.
  single = ablate.markdown_table(ablate.aggregate(rows[:1], ['a']))
  assert '| **a** (best) | 50.00 | 40.00 | 50.00 | 60.00 | 10 | 100 | 10 | 1/1 |' in single


def test_plot_says_why_a_variant_has_no_accuracy():
  """Only a failed run is drawn as 'failed'; a sweep still running, or contrastive-only runs
  (no classifier, so no accuracy), are not."""
  blank = dict(test_accuracy=None, test_macro_f1=None, final_test_accuracy=None,
               best_validation_accuracy=None, num_params=None, examples_per_sec=None,
               wall_time_s=1.0, error=None)
  rows = [{'variant': 'broken', 'seed': 0, **blank, 'status': 'failed', 'error': 'boom'},
          {'variant': 'broken', 'seed': 1, **blank, 'status': 'running'},
          {'variant': 'pending', 'seed': 0, **blank, 'status': 'running'},
          {'variant': 'contrastive', 'seed': 0, **blank, 'status': 'done'}]
  table = ablate.aggregate(rows, ['broken', 'pending', 'contrastive'])
  assert [ablate.no_accuracy_reason(a) for a in table] == [
      'failed', 'not finished', 'no classifier']


def test_evaluator_records_become_columns_and_a_table(tmp_path, capsys):
  """eval_<evaluator> records -> `<evaluator>/<metric>` columns; headline metrics -> a table.
  A contrastive-only run (no accuracy in its eval_test record) still counts as done."""
  runs = ablate.plan(CONFIG, [ablate.Variant('clip')], [0, 1], str(tmp_path))
  for run, (r1, rank) in zip(runs, ((0.4, 2.0), (0.6, 4.0))):
    records = [{'step': 5, 'split': 'validation', 'loss': 2.0 * r1},
               {'step': 9, 'split': 'eval_test', 'loss': 1.0, 'loss_contrastive': 1.0},
               {'step': 9, 'split': 'eval_retrieval', 'num_examples': 40,
                'audio_to_image/class/recall@1': r1, 'audio_to_image/class/median_rank': rank,
                'audio_to_image/instance/recall@5': 0.1, 'levels': [0.0, 1.0]}]
    files.write_file(os.path.join(run.workdir, 'metrics.jsonl'),
                     ''.join(json.dumps(r) + '\n' for r in records))
  rows = [ablate.collect_run(r) for r in runs]
  assert [r['status'] for r in rows] == ['done', 'done'] and rows[0]['test_accuracy'] is None
  assert ablate.evaluator_columns(rows) == [
      'retrieval/audio_to_image/class/median_rank', 'retrieval/audio_to_image/class/recall@1',
      'retrieval/audio_to_image/instance/recall@5', 'retrieval/num_examples']
  text = ablate.evaluator_table(ablate.aggregate(rows, ['clip']))
  assert text.splitlines()[0] == ('| variant | retrieval/audio_to_image/class/median_rank | '
                                  'retrieval/audio_to_image/class/recall@1 (%) |')
  assert text.splitlines()[2] == '| clip | 3.0 ± 1.4 | 50.00 ± 14.14 |'
  assert ablate.evaluator_table(ablate.aggregate(rows[:0], ['clip'])) == ''
  # A third finished seed without the evaluator: the table says the value is of 2 of 3 seeds.
  third = {**rows[1], 'seed': 2, **{k: None for k in ablate.evaluator_columns(rows)}}
  text = ablate.evaluator_table(ablate.aggregate(rows + [third], ['clip']))
  assert text.splitlines()[2] == '| clip | 3.0 ± 1.4 (2/3 seeds) | 50.00 ± 14.14 (2/3 seeds) |'
  one = ablate.evaluator_table(ablate.aggregate([rows[0], third], ['clip']))
  assert one.splitlines()[2] == '| clip | 2.0 (1/2 seeds) | 40.00 (1/2 seeds) |'
  # --metrics: any evaluator columns, printed; counts stay raw; nothing is written.
  sweep = tmp_path / 'clip.py'
  sweep.write_text('from crossmodal.ablate import Variant\ndef get_sweep():\n'
                   '  return [Variant("clip")]\n')
  args = [f'--config={CONFIG}', f'--sweep={sweep}', f'--root={tmp_path}', '--seeds=2']
  assert ablate.main(args + ['--metrics=instance/recall@5,num_examples']) == 0
  assert capsys.readouterr().out.splitlines()[2] == '| clip | 10.00 ± 0.00 | 40.0 ± 0.0 |'
  assert not (tmp_path / 'results.md').exists()
  assert ablate.main(args + ['--metrics=recall@50']) == 0
  assert 'no evaluator column' in capsys.readouterr().out
  assert ablate.main(args + ['--metrics=.']) == 0  # evaluator columns only, nothing else
  assert capsys.readouterr().out.splitlines()[0].startswith('| variant | retrieval/')
  # No validation accuracy anywhere: the curves are of the validation loss instead.
  assert ablate.validation_curve(runs[1]) == []
  assert ablate.validation_curve(runs[1], 'loss') == [(5, 1.2)]
  paths = ablate.plot(runs, ablate.aggregate(rows, ['clip']), str(tmp_path))
  assert [os.path.basename(p) for p in paths] == ['accuracy.png', 'validation_curves.png']


def test_failure_reason_prefers_main_error_then_exception():
  assert ablate.failure_reason('x\nerror: config.optim.lr must be > 0\n', 2) == \
      'config.optim.lr must be > 0'
  assert ablate.failure_reason('Traceback\n  File "x"\nValueError: bad\n', 1) == \
      'ValueError: bad'
  assert ablate.failure_reason('', -9) == 'killed by signal 9'
  assert ablate.failure_reason('ValueError: old\n', -15) == 'killed by signal 15'
  assert ablate.failure_reason('', 75) == 'SIGTERM, checkpoint saved; resumes on the next start'


def test_a_workdir_holding_another_experiment_stops_the_sweep(sweep_file, tmp_path, capsys):
  root = tmp_path / 'root'
  args = [f'--config={CONFIG}', f'--sweep={sweep_file}', f'--root={root}', '--seeds=2']
  runs = ablate.plan(CONFIG, ablate.load_sweep(sweep_file), [0, 1], str(root))
  concat0, concat1, _, _, sum0, sum1 = runs

  def started(run, command, config=None):
    files.write_file(os.path.join(run.workdir, ablate.STATUS),
                     json.dumps({'state': 'done', 'command': ' '.join(command)}))
    if config is not None:
      files.write_file(os.path.join(run.workdir, 'config.json'), json.dumps(config))

  # Another interpreter, a root since moved, the same arguments: the same run.
  started(concat0, ['/other/python'] + [a.replace(str(root), '/old') for a in concat0.command[1:]])
  # Another command line that resolves to the same config (config.json decides): the same run.
  config = ablate.planned_config(concat1)
  assert config['seed'] == 1 and config['model']['fusion']['type'] == 'concat'
  started(concat1, [a.replace('size=tiny', 'size=tiny,fusion=concat') for a in concat1.command],
          config)
  # Failed before training (no config.json), e.g. a bad key since fixed in the sweep file:
  # nothing was trained, so it simply runs again with the new command.
  started(sum0, [a.replace('optim.lr=0.01', 'optim.lr=0.1') for a in sum0.command])
  # The same command, but the base config file has changed since: config.json says so.
  config = ablate.planned_config(sum1)
  assert config['optim']['lr'] == 0.01
  started(sum1, sum1.command, {**config, 'optim': {**config['optim'], 'lr': 0.003}})
  changed = ablate.changed_runs(runs)
  assert [(r, what) for r, what in changed] == [
      (sum1, 'config.json differs: optim.lr: 0.003 -> 0.01')]

  assert ablate.main(args) == 2
  err = capsys.readouterr().err
  assert 'another experiment' in err
  assert f'{root}/sum/seed1: config.json differs: optim.lr: 0.003 -> 0.01' in err
  assert f'{root}/concat' not in err and f'{root}/sum/seed0' not in err
  assert not (root / 'broken').exists()  # nothing was started
  assert ablate.main(args + ['--dry_run']) == 0
  out = capsys.readouterr().out
  assert out.count('holds another experiment') == 1
  assert '# concat seed 0 (done)\n/' in out


@pytest.mark.slow
def test_ctrl_c_stops_the_sweep_and_the_run_in_progress_saves(tmp_path, monkeypatch):
  """Ctrl-C reaches the runner's process group: the run in progress (in its own session) gets
  SIGTERM from the runner, saves a checkpoint and is marked preempted; nothing else starts."""
  monkeypatch.setenv('JAX_COMPILATION_CACHE_DIR', str(tmp_path / 'jax_cache'))
  sweep = tmp_path / 'long.py'
  sweep.write_text('from crossmodal.ablate import Variant\n'
                   'def get_sweep():\n'
                   '  return [Variant("long", "fusion=concat", {"train.num_steps": 100000})]\n')
  root = tmp_path / 'root'
  runner = subprocess.Popen(
      [sys.executable, os.path.join(REPO, 'scripts', 'ablate.py'), f'--config={CONFIG}',
       f'--sweep={sweep}', f'--root={root}', '--seeds=2'],
      stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, start_new_session=True)
  metrics = root / 'long' / 'seed0' / 'metrics.jsonl'
  deadline = time.monotonic() + 240
  while not (metrics.exists() and '"train"' in metrics.read_text()):
    assert runner.poll() is None and time.monotonic() < deadline, runner.stdout.read()
    time.sleep(0.5)
  os.killpg(runner.pid, signal.SIGINT)  # what the terminal does on Ctrl-C
  out, _ = runner.communicate(timeout=120)
  assert runner.returncode == -signal.SIGINT, out  # dies of it, so a calling script stops
  assert 'stopped by SIGINT' in out and '[preempted] long seed 0' in out, out
  status = ablate.read_status(str(root / 'long' / 'seed0'))
  assert status['state'] == 'preempted' and status['returncode'] == ablate.PREEMPTED_EXIT_CODE
  assert os.listdir(root / 'long' / 'seed0' / 'checkpoints')
  assert not (root / 'long' / 'seed1').exists()  # not started after the signal


def test_only_narrows_what_runs_but_the_report_covers_the_whole_sweep(sweep_file, tmp_path,
                                                                      capsys):
  root = tmp_path / 'root'
  runs = ablate.plan(CONFIG, ablate.load_sweep(sweep_file), [0], str(root))
  files.write_file(os.path.join(runs[0].workdir, 'metrics.jsonl'), json.dumps(
      {'step': 9, 'split': 'eval_test', 'accuracy': 0.5, 'macro_f1': 0.4}) + '\n')
  args = [f'--config={CONFIG}', f'--sweep={sweep_file}', f'--root={root}', '--seeds=1']
  assert ablate.main(args + ['--only=concat', '--report_only']) == 0  # concat is done
  table = (root / 'results.md').read_text()
  assert '| **concat** (best) | 50.00 |' in table
  assert '| broken | - |' in table and '| sum | - |' in table  # still listed, not finished
  assert ablate.main(args + ['--only=sum', '--dry_run']) == 0
  assert capsys.readouterr().out.count('crossmodal.main') == 1


@pytest.mark.parametrize('config,first_alone', [
    (CONFIG, False),  # synthetic data: nothing to build
    # AV-MNIST in an empty data_dir: the first run builds it, the others wait for it.
    (os.path.join(REPO, 'experiments', 'avmnist.py'), True),
])
def test_parallel_runs_start_together_unless_the_data_is_still_to_build(
    config, first_alone, tmp_path, monkeypatch):
  variants = [ablate.Variant(n, 'fusion=concat', {'data.data_dir': str(tmp_path / 'tfds')}
                             if 'avmnist' in config else {}) for n in ('a', 'b', 'c')]
  runs = ablate.plan(config, variants, [0], str(tmp_path / 'root'))
  ablate._write_status(runs[0].workdir, {'state': 'done', 'wall_time_s': 1.0})
  events = []

  def fake_execute(run):  # records when each run starts and ends, overlapping if allowed
    events.append(('start', run.variant.name))
    time.sleep(0.3)
    events.append(('end', run.variant.name))
    return {'state': 'done', 'wall_time_s': 0.3}

  monkeypatch.setattr(ablate, 'execute', fake_execute)
  logged = []
  ablate.run_all(runs, parallel=2, log=logged.append)
  assert sorted(events) == [('end', 'b'), ('end', 'c'), ('start', 'b'), ('start', 'c')]
  # 'a' was done: skipped, never run again; the first pending run is 'b'.
  assert sum('[skip] a seed 0' in line for line in logged) == 1
  assert (events.index(('end', 'b')) < events.index(('start', 'c'))) == first_alone


@pytest.mark.parametrize('sweep', ['crossattn', 'bottleneck'])
def test_committed_study_records_still_match_what_the_sweep_plans(sweep):
  """docs/runs copied back under a root is skipped, not refused: config.json files written
  before config.evaluators held the in-loop evaluation (train.eval_every, eval_splits,
  best_metric='accuracy') read as the same experiment as today's configs."""
  root = os.path.join(REPO, 'docs', 'runs', sweep)
  avmnist = os.path.join(REPO, 'experiments', 'avmnist.py')
  sweep_file = os.path.join(REPO, 'experiments', 'sweeps', f'{sweep}.py')
  runs = ablate.plan(avmnist, ablate.load_sweep(sweep_file), [0, 1, 2], root)
  assert all(os.path.exists(os.path.join(r.workdir, 'config.json')) for r in runs)
  assert ablate.changed_runs(runs) == []
