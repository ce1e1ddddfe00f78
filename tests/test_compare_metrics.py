"""scripts/compare_metrics.py, the refactor check: equal records pass whatever their timings and
picture paths; any other changed value, a missing key or a missing record fails."""
import json
import os

from conftest import REPO
from crossmodal import config_utils

compare = config_utils.load_module(os.path.join(REPO, 'scripts', 'compare_metrics.py'),
                                   'compare_metrics')


def _write(path, records):
  path.write_text(''.join(json.dumps(r) + '\n' for r in records))
  return str(path)


def test_same_records_but_timings_and_paths(tmp_path, capsys):
  a = [{'step': 4, 'split': 'train', 'loss': 0.5, 'steps_per_sec': 3.0},
       {'step': 4, 'split': 'eval_attention', 'maps': 2, 'picture': '/a/eval/attention.png'}]
  b = [{**a[0], 'steps_per_sec': 9.0, 'examples_per_sec': 1.0},
       {**a[1], 'picture': '/b/eval/attention.png'}]
  assert compare.main([_write(tmp_path / 'a', a), _write(tmp_path / 'b', b)]) == 0
  assert 'same: 2 records' in capsys.readouterr().out


def test_any_other_difference_fails(tmp_path, capsys):
  a = [{'step': 4, 'split': 'validation', 'loss': 0.5, 'accuracy': 0.25}]
  for b, expect in [([{**a[0], 'loss': 0.5000000000000001}], 'loss: 0.5 -> 0.5000000000000001'),
                    ([{k: v for k, v in a[0].items() if k != 'accuracy'}], 'accuracy'),
                    ([], '1 records before, 0 after')]:
    assert compare.main([_write(tmp_path / 'a', a), _write(tmp_path / 'b', b)]) == 1
    assert expect in capsys.readouterr().out
