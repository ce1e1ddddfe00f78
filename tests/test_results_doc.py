"""The sweep tables of docs/results.md are what the runner reports from the records in docs/runs.

docs/runs/<sweep> holds the run records (docs/runs/README.md); this rebuilds each table from
them the way `ablate.py --report_only --root=docs/runs/<sweep>` does and looks for every row
on the page as one whole table, so a table edited by hand, or left behind when records were
added, fails here. The same for the robustness tables of the modality-dropout variants
(scripts/robustness_report.py over the evaluation records in the same run records).
"""
import itertools
import os

import pytest

from crossmodal import ablate
from crossmodal import config_utils
from conftest import REPO

SWEEPS = ('crossattn', 'bottleneck', 'avmnist_transfer')  # runner tables on the page


def _page_tables() -> list[list[str]]:
  page = open(os.path.join(REPO, 'docs', 'results.md'), encoding='utf-8').read().splitlines()
  return [list(block) for is_row, block in
          itertools.groupby(page, lambda line: line.startswith('|')) if is_row]


@pytest.mark.parametrize('sweep', SWEEPS)
def test_published_table_is_the_report_of_the_committed_records(sweep):
  variants = ablate.load_sweep(os.path.join(REPO, 'experiments', 'sweeps', f'{sweep}.py'))
  root = os.path.join(REPO, 'docs', 'runs', sweep)
  runs = ablate.plan('experiments/avmnist.py', variants, range(3), root)
  rows = [ablate.collect_run(r) for r in runs]
  assert sum(r['status'] == 'done' for r in rows) >= 5  # the records were found
  table = ablate.markdown_table(ablate.aggregate(rows, [v.name for v in variants]))
  lines = table.strip().splitlines()
  assert len(lines) == 2 + len(variants), table
  assert lines in _page_tables(), (f'no table of docs/results.md is the report of '
                                   f'docs/runs/{sweep} (rerun --report_only there and paste '
                                   'its table):\n' + table)


@pytest.mark.parametrize('sweep,reference', [('crossattn', 'crossattn'),
                                             ('bottleneck', 'mid_fusion_layer2')])
def test_published_robustness_table_is_the_report_of_the_committed_records(sweep, reference):
  report = config_utils.load_module(os.path.join(REPO, 'scripts', 'robustness_report.py'),
                                    '_robustness_report')
  root = os.path.join(REPO, 'docs', 'runs', sweep)
  summaries = {}
  for variant in (reference, 'modality_dropout_0.3'):
    records = report.load_records([root], variant)
    assert records, f'no eval_robustness record under {root}/{variant}'
    summaries[variant] = report.summarize(records)
  lines = report.table(summaries, ['image', 'audio'], reference).strip().splitlines()
  assert len(lines) == 4, lines
  assert lines in _page_tables(), (f'no table of docs/results.md is the robustness report of '
                                   f'docs/runs/{sweep}:\n' + '\n'.join(lines))


# Evaluator tables: (sweep, its base config, the --metrics regexes the page's command gives).
EVALUATOR_TABLES = [
    ('emoji_batch', 'experiments/emoji_retrieval.py', ('zero_shot/accuracy', 'class/recall@1$')),
    ('avmnist_pretrain', 'experiments/avmnist_retrieval.py',
     ('probe_.*/accuracy$', 'class/recall@1$')),
    ('avmnist_transfer', 'experiments/avmnist.py', ('probe_.*/accuracy$',)),
    ('transcribe', 'experiments/avmnist_transcribe.py', ('exact_match$', 'cer$')),
    ('emoji_caption', 'experiments/emoji_caption.py', ('^test/(exact_match|cer|token_f1|bleu)$',)),
]


@pytest.mark.parametrize('sweep,config,metrics', EVALUATOR_TABLES, ids=[t[0] for t in EVALUATOR_TABLES])
def test_published_evaluator_table_is_the_report_of_the_committed_records(sweep, config, metrics):
  """The table `ablate.py --metrics=...` prints from docs/runs/<sweep>, whole, on the page."""
  variants = ablate.load_sweep(os.path.join(REPO, 'experiments', 'sweeps', f'{sweep}.py'))
  runs = ablate.plan(config, variants, range(3), os.path.join(REPO, 'docs', 'runs', sweep))
  rows = [ablate.collect_run(r) for r in runs]
  assert all(r['status'] == 'done' for r in rows), [(r['variant'], r['seed'], r['status'])
                                                    for r in rows if r['status'] != 'done']
  table = ablate.evaluator_table(ablate.aggregate(rows, [v.name for v in variants]), metrics)
  lines = table.strip().splitlines()
  assert len(lines) == 2 + len(variants), table
  assert lines in _page_tables(), (f'no table of docs/results.md is the --metrics report of '
                                   f'docs/runs/{sweep}:\n' + table)
