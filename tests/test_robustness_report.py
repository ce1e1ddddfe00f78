"""scripts/robustness_report.py on hand-made eval_robustness records."""
import json
import os

import pytest

from crossmodal import config_utils
from crossmodal import files
from conftest import REPO

report = config_utils.load_module(os.path.join(REPO, 'scripts', 'robustness_report.py'),
                                  '_robustness_report')
LEVELS = [0.0, 0.5, 1.0]


def _write(root, variant, seed, **values):
  record = {'step': 10, 'split': 'eval_robustness', 'num_examples': 4, 'levels': LEVELS,
            **values}
  other = {'step': 10, 'split': 'eval_test', 'accuracy': 0.0}
  files.write_file(os.path.join(root, variant, f'seed{seed}', 'metrics.jsonl'),
                   json.dumps(other) + '\n' + json.dumps(record) + '\n')


def test_table_and_plot(tmp_path, capsys):
  root = str(tmp_path)
  for seed, clean in enumerate((0.8, 0.6)):  # late: two seeds, averaged
    _write(root, 'late', seed, **{'clean/accuracy': clean, 'missing_image/accuracy': 0.5,
                                  'missing_audio/accuracy': 0.3,
                                  'image_gaussian/accuracy': [clean, 0.5, 0.2],
                                  'image/relative_robustness': 0.4})
  _write(root + '/other', 'image_only', 0, **{'clean/accuracy': 0.6,
                                   'image_gaussian/accuracy': [0.6, 0.6, 0.6],
                                   'image/relative_robustness': 0.6})
  assert report.main([f'--root={root},{root}/other', '--variants=late,image_only']) == 0
  text = open(os.path.join(root, 'robustness.md')).read()
  assert text == capsys.readouterr().out.split('written:')[0].rstrip('\n') + '\n'
  lines = text.splitlines()
  assert lines[0] == ('| variant | seeds | clean | missing image | missing audio | image RR | '
                      'audio RR | image ER | audio ER |')
  # late: mean curve [0.7, 0.5, 0.2]; its own effective robustness is 0.
  assert lines[2] == '| late | 2 | 70.00 | 50.00 | 30.00 | 40.00 | - | 0.00 | - |'
  # image_only vs late shifted to 0.6: [0.6, 0.4, 0.1] -> gaps 0 + 0.2 + 0.5 = 0.7 over two
  # noisy levels: 35 points per level.
  assert lines[3] == '| image_only | 1 | 60.00 | - | - | 60.00 | - | 35.00 | - |'
  assert os.path.getsize(os.path.join(root, 'robustness.png')) > 1000


def test_missing_records_and_mismatched_levels(tmp_path, capsys):
  root = str(tmp_path)
  _write(root, 'late', 0, **{'clean/accuracy': 0.5})
  assert report.main([f'--root={root}', '--variants=late,concat']) == 2
  assert 'no eval_robustness record' in capsys.readouterr().err
  assert report.main([f'--root={root}', '--variants=late', '--reference=concat']) == 2
  _write(root, 'coarse', 0, **{'clean/accuracy': 0.5})
  record = files.read_jsonl(os.path.join(root, 'coarse', 'seed0', 'metrics.jsonl'))[-1]
  files.write_file(os.path.join(root, 'coarse', 'seed0', 'metrics.jsonl'),
                   json.dumps({**record, 'levels': [0.0, 1.0]}) + '\n')
  assert report.main([f'--root={root}', '--variants=late,coarse']) == 2
  assert 'needs the same' in capsys.readouterr().err
  with pytest.raises(ValueError, match='disagree on the noise levels'):
    report.summarize([{'levels': [0.0, 1.0], 'clean/accuracy': 0.5},
                      {'levels': [0.0, 0.5, 1.0], 'clean/accuracy': 0.5}])
