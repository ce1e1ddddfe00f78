"""scripts/reproduce_results.sh runs every command docs/results.md shows, with files that exist."""
import os
import re
import subprocess

from conftest import REPO


def _doc_commands():
  """Commands of the page's bash blocks, continuation lines joined; loop bodies that use a
  shell variable ($f) are skipped (the script runs them with the variable expanded)."""
  text = open(os.path.join(REPO, 'docs', 'results.md'), encoding='utf-8').read()
  commands = []
  for block in re.findall(r'```bash\n(.*?)```', text, re.S):
    for command in block.replace('\\\n', ' ').splitlines():
      command = ' '.join(command.split())
      if command and '$' not in command and command.split()[0] not in ('for', 'done'):
        commands.append(command)
  return commands


def _dry_run():
  out = subprocess.run(['bash', os.path.join(REPO, 'scripts', 'reproduce_results.sh')],
                       env={**os.environ, 'DRY_RUN': '1'}, capture_output=True, text=True,
                       check=True, cwd='/')
  return [' '.join(line.split()) for line in out.stdout.splitlines()]


def test_every_command_of_the_results_page_is_in_the_script():
  doc, script = _doc_commands(), _dry_run()
  assert len(doc) >= 20  # the page's blocks were found
  missing = [c for c in doc if c not in script]
  assert not missing, f'docs/results.md commands that scripts/reproduce_results.sh does not run: {missing}'


def test_the_script_names_only_configs_and_sweeps_that_exist():
  paths = set()
  for command in _dry_run():
    paths.update(re.findall(r'--(?:config|sweep)=(experiments/[\w/.]+\.py)', command))
  assert len(paths) >= 8
  assert [p for p in sorted(paths) if not os.path.exists(os.path.join(REPO, p))] == []


def _listing(path):
  return sorted(os.path.relpath(os.path.join(d, f), path)
                for d, _, files in os.walk(path) for f in files) if os.path.isdir(path) else []


def test_a_dry_run_writes_nothing():
  markers = os.path.join(REPO, 'runs', '.reproduce')
  top = lambda: sorted(os.listdir(os.path.join(REPO, 'runs'))) if os.path.isdir(
      os.path.join(REPO, 'runs')) else []
  before = (top(), _listing(markers))
  _dry_run()
  assert (top(), _listing(markers)) == before
