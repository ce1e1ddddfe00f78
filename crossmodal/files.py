"""Workdir files on local disks or object stores (gs://), through `etils.epath`.

One place for how the project writes small files (config.json, run_info.json,
metrics.jsonl, sweep status) so that a gs:// workdir works everywhere. No JAX import: the sweep
runner uses it too.
"""
from __future__ import annotations

import json
import os
from typing import Any

from etils import epath


def is_local(path: str | os.PathLike) -> bool:
  return '://' not in os.fspath(path)


def write_file(path: str | os.PathLike, data: str | bytes) -> None:
  """Replaces the file at `path` with text or bytes, creating its directory (local:
  atomically via rename; gs:// etc.: one upload)."""
  path = epath.Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  write = ((lambda p: p.write_bytes(data)) if isinstance(data, bytes)
           else (lambda p: p.write_text(data, encoding='utf-8')))
  if is_local(path):
    tmp = path.parent / (path.name + '.tmp')
    write(tmp)
    os.replace(tmp, path)
  else:
    write(path)


def append_line(path: str | os.PathLike, line: str, all_lines: list[str]) -> None:
  """Adds `line` to a text file whose lines (this one included) are `all_lines`: a local file
  is appended to; an object store cannot append, so the whole file is uploaded again."""
  if is_local(path):
    with open(path, 'a', encoding='utf-8') as f:
      f.write(line + '\n')
  else:
    write_file(path, ''.join(l + '\n' for l in all_lines))


def parse_jsonl(text: str) -> list[dict[str, Any]]:
  """Records of JSON-lines text, skipping blank lines and a line cut short by a crash."""
  out = []
  for line in text.splitlines():
    try:
      out.append(json.loads(line))
    except json.JSONDecodeError:
      continue
  return out


def read_jsonl(path: str | os.PathLike) -> list[dict[str, Any]]:
  """All records of a JSON-lines file (metrics.jsonl); [] if there is none."""
  path = epath.Path(path)
  return parse_jsonl(path.read_text()) if path.exists() else []
