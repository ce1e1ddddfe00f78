r"""Robustness table and accuracy-vs-noise curves across the runs of a sweep.

  python scripts/robustness_report.py --root=runs/fusion,runs/robustness \
      --variants=image_only,audio_only,late,concat,crossattn,bottleneck --reference=late

Reads the latest `eval_robustness` record (crossmodal/evaluators/robustness.py, written by
`python -m crossmodal.main ... --mode=eval` with `evals=robustness`, or after training) of every
`<root>/<variant>/seed<k>/metrics.jsonl` (the first root, of a comma-separated list, that has
the variant), averages over seeds, and writes `<out>/robustness.md` and `<out>/robustness.png`
(default out: the first root). Columns, all in %:
  clean               test accuracy without corruption
  missing <m>         accuracy with modality m hidden by the model's `present` mask
  <m> RR              relative robustness: area under accuracy vs noise level in [0, 1],
                      averaged over m's noise kinds (MultiBench)
  <m> ER              effective robustness against the reference variant (late fusion), in
                      points per level: MultiBench's sum over levels of the gap between the
                      curve and the reference's curve shifted to the same clean accuracy,
                      divided by the number of noisy levels, averaged over m's noise kinds
"""
from __future__ import annotations

import argparse
import io
import os
import statistics
import sys
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from etils import epath

from crossmodal import files
from crossmodal.data import noise
from crossmodal.evaluators import robustness


def load_records(roots: Sequence[str], variant: str) -> list[dict[str, Any]]:
  """The latest eval_robustness record of each seed<k> workdir of `variant`, from the first
  root that has any."""
  for root in roots:
    out = []
    for path in sorted((epath.Path(root) / variant).glob('seed*/metrics.jsonl')):
      records = [r for r in files.read_jsonl(str(path)) if r['split'] == 'eval_robustness']
      if records:
        out.append(records[-1])
    if out:
      return out
  return []


def _mean(values: Sequence[Any]) -> Any:
  """Mean over seeds, elementwise for curves."""
  if isinstance(values[0], list):
    return [statistics.mean(v) for v in zip(*values)]
  return statistics.mean(values)


def summarize(records: Sequence[Mapping[str, Any]]) -> dict[str, Any]:
  """Mean over seeds of every accuracy and curve (records must share their noise levels)."""
  levels = records[0]['levels']
  if any(r['levels'] != levels for r in records):
    raise ValueError('robustness records disagree on the noise levels: '
                     f'{sorted({tuple(r["levels"]) for r in records})}')
  keys = set.intersection(*[set(r) for r in records]) - {'step', 'split', 'levels',
                                                          'num_examples'}
  summary = {k: _mean([r[k] for r in records]) for k in sorted(keys)}
  summary.update(levels=levels, seeds=len(records))
  return summary


def _curves(summary: Mapping[str, Any], modality: str) -> list[str]:
  """The accuracy-vs-noise curves of `modality` in `summary` (robustness.curve names)."""
  return sorted(robustness.curve(modality, kind) for kind in noise.NOISES.get(modality, ())
                if robustness.curve(modality, kind) in summary)


def table(summaries: Mapping[str, Mapping[str, Any]], modalities: Sequence[str],
          reference: str | None) -> str:
  """The Markdown table of the module docstring."""
  ref = summaries.get(reference) if reference else None
  if ref:
    for name, s in summaries.items():
      if s['levels'] != ref['levels']:
        raise ValueError(f'{name} was evaluated at noise levels {s["levels"]}, the reference '
                         f'{reference} at {ref["levels"]}: effective robustness needs the same')
  cells = lambda v: '-' if v is None else f'{round(100 * v, 2) + 0.0:.2f}'  # no '-0.00'
  head = (['variant', 'seeds', 'clean'] + [f'missing {m}' for m in modalities]
          + [f'{m} RR' for m in modalities] + ([f'{m} ER' for m in modalities] if ref else []))
  lines = ['| ' + ' | '.join(head) + ' |', '|---' * len(head) + '|']
  for name, s in summaries.items():
    row = [name, str(s['seeds']), cells(s[robustness.CLEAN])]
    row += [cells(s.get(robustness.missing(m))) for m in modalities]
    row += [cells(s.get(robustness.area(m))) for m in modalities]
    if ref:
      for m in modalities:
        curves = [k for k in _curves(s, m) if k in ref]
        gaps = [robustness.effective_robustness(s[k], ref[k]) / (len(s['levels']) - 1)
                for k in curves]
        row.append(cells(float(np.mean(gaps)) if gaps else None))
    lines.append('| ' + ' | '.join(row) + ' |')
  return '\n'.join(lines) + '\n'


def plot(summaries: Mapping[str, Mapping[str, Any]], modalities: Sequence[str], path: str
         ) -> str:
  """One panel per noise (modality, kind): mean accuracy vs level, one line per variant."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  curves = sorted({k for s in summaries.values() for m in modalities for k in _curves(s, m)})
  if not curves:
    raise ValueError('no accuracy-vs-noise curves in the records (config.evaluators.'
                     'robustness.noises was empty)')
  cols = min(4, len(curves))
  rows = -(-len(curves) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 2.8 * rows), squeeze=False)
  colours = {name: plt.get_cmap('tab10')(i % 10) for i, name in enumerate(summaries)}
  for ax, key in zip(axes.ravel(), curves):
    for name, s in summaries.items():  # a variant keeps its colour in every panel
      if key in s:
        ax.plot(s['levels'], [100 * a for a in s[key]], marker='.', color=colours[name])
    ax.set_title(key[:-len('/accuracy')].replace('_', ' ', 1), fontsize=9)
    ax.set_xlabel('noise level')
    ax.set_ylabel('test accuracy (%)')
    ax.set_ylim(0, 100)
  for ax in axes.ravel()[len(curves):]:
    ax.axis('off')
  fig.legend(handles=[matplotlib.lines.Line2D([], [], color=c, marker='.', label=n)
                      for n, c in colours.items()],
             loc='lower center', ncol=min(len(colours), 6), fontsize='small')
  fig.tight_layout(rect=(0, 0.06 + 0.02 * (len(colours) > 6), 1, 1))
  buffer = io.BytesIO()
  fig.savefig(buffer, format='png', dpi=110)
  plt.close(fig)
  files.write_file(path, buffer.getvalue())
  return path


def main(argv: Sequence[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--root', required=True,
                 help='sweep root(s) holding <variant>/seed<k>/, comma-separated')
  p.add_argument('--variants', required=True, help='comma-separated, in table order')
  p.add_argument('--reference', default='late',
                 help="variant for effective robustness ('' for none; default late)")
  p.add_argument('--modalities', default='image,audio')
  p.add_argument('--out', default='', help='output directory (default: the first root)')
  args = p.parse_args(argv)
  variants = [v for v in args.variants.split(',') if v]
  modalities = [m for m in args.modalities.split(',') if m]
  roots = [r for r in args.root.split(',') if r]
  summaries, missing = {}, []
  for v in variants:
    records = load_records(roots, v)
    if records:
      summaries[v] = summarize(records)
    else:
      missing.append(v)
  if missing:
    print(f'error: no eval_robustness record under {args.root} for {missing} '
          '(<root>/<variant>/seed<k>/metrics.jsonl); '
          'run: python -m crossmodal.main --config=<the variant\'s config>,evals=robustness '
          '--workdir=<root>/<variant>/seed<k> --mode=eval', file=sys.stderr)
    return 2
  if args.reference and args.reference not in summaries:
    print(f'error: --reference={args.reference} is not among --variants', file=sys.stderr)
    return 2
  out = args.out or roots[0]
  try:
    text = table(summaries, modalities, args.reference or None)
    plot(summaries, modalities, os.path.join(out, 'robustness.png'))
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  files.write_file(os.path.join(out, 'robustness.md'), text)
  print(text)
  print(f'written: {os.path.join(out, "robustness.md")}, robustness.png')
  return 0


if __name__ == '__main__':
  sys.exit(main())
