r"""Are two runs' metrics.jsonl the same, record by record, timings aside? For refactors.

  python scripts/compare_metrics.py runs/before/metrics.jsonl runs/after/metrics.jsonl

A refactor must change no number: record a seeded run before, rerun it after, compare. Every
record must be equal in split, step and every value (floats bitwise, as JSON writes them),
except the wall-clock fields (TIMINGS) and paths into the workdir (`picture`), which differ
between any two runs. Exits 1 and prints the first differences if they are not the same.
"""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

TIMINGS = ('steps_per_sec', 'examples_per_sec')
PATHS = ('picture',)


def _comparable(record: dict[str, Any]) -> dict[str, Any]:
  return {k: v for k, v in record.items() if k not in TIMINGS + PATHS}


def differences(before: list[dict[str, Any]], after: list[dict[str, Any]]) -> list[str]:
  """What differs, one line each ([] if the records are the same)."""
  out = []
  if len(before) != len(after):
    out.append(f'{len(before)} records before, {len(after)} after')
  for i, (a, b) in enumerate(zip(before, after)):
    a, b = _comparable(a), _comparable(b)
    if a == b:
      continue
    where = f'record {i} ({a.get("split")}, step {a.get("step")})'
    keys = sorted(set(a) | set(b))
    for key in keys:
      if a.get(key, '<absent>') != b.get(key, '<absent>'):
        out.append(f'{where}: {key}: {json.dumps(a.get(key, "<absent>"))[:80]} -> '
                   f'{json.dumps(b.get(key, "<absent>"))[:80]}')
  return out


def _read(path: str) -> list[dict[str, Any]]:
  with open(path, encoding='utf-8') as f:
    return [json.loads(line) for line in f if line.strip()]


def main(argv: list[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  p.add_argument('before')
  p.add_argument('after')
  args = p.parse_args(argv)
  before, after = _read(args.before), _read(args.after)
  diff = differences(before, after)
  if diff:
    print('\n'.join(diff[:40]))
    return 1
  print(f'same: {len(before)} records, every value equal but {", ".join(TIMINGS + PATHS)}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
