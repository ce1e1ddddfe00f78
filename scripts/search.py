r"""Rank your own collection with a trained contrastive run (crossmodal/search.py):

  python scripts/search.py --workdir=runs/mine --manifest=/data/photos.csv \
      --text="a red apple" [--k=10] [--sheet=apple.png] [--checkpoint=best|latest|<step>]
  python scripts/search.py --workdir=runs/mine --manifest=/data/photos.csv --audio=query.wav
  python scripts/search.py --workdir=runs/mine --manifest=/data/captions.csv --image=query.png

The query's modality is one end of the run's contrastive pair; the items ranked are the
other end's column of the manifest (--target to choose). The first search over a manifest
embeds its items and caches them in <workdir>/search_cache/; later ones read the cache. Prints
the top k (rank, cosine score, manifest line, the row's text or file) and writes a contact
sheet PNG (default: <workdir>/search_cache/last.png).
"""
import argparse
import os
import pathlib
import sys

from crossmodal import schema
from crossmodal import search
from crossmodal.data import manifest as manifest_lib


def main(argv=None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n', 1)[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--workdir', required=True, help='the trained run')
  p.add_argument('--manifest', required=True, help='the collection: a manifest (CSV or JSONL)')
  query = p.add_mutually_exclusive_group(required=True)
  for m in ('text', 'audio', 'image'):
    query.add_argument(f'--{m}', help=f'the query: a {m}' + (' file' if m != 'text' else ''))
  p.add_argument('--target', default='', help='modality to rank (default: the pair\'s other end)')
  p.add_argument('--k', type=int, default=10)
  p.add_argument('--checkpoint', default='best', help="'best', 'latest' or a step")
  p.add_argument('--on_error', default='raise', choices=('raise', 'skip'),
                 help='bad collection rows stop the search or are left out')
  p.add_argument('--sheet', default='', help='contact sheet PNG path')
  args = p.parse_args(argv)
  if args.k < 1:
    p.error('--k must be at least 1')
  modality = next(m for m in ('text', 'audio', 'image') if getattr(args, m) is not None)
  value = getattr(args, modality)
  try:
    run = search.load(args.workdir, args.checkpoint)
    target = search.target_of(run, modality, args.target)
    lines, vectors, cache = search.collection(run, args.manifest, target, args.on_error)
    q = search.embed(run, modality, [search.query_example(run, modality, value)])[0]
    order, scores = search.top_k(q, vectors, args.k)
  except (schema.ConfigError, manifest_lib.ManifestError) as e:
    print(f'search.py: {e}', file=sys.stderr)
    return 2
  path = pathlib.Path(args.manifest)
  rows = {line: cells for line, _, cells in manifest_lib.read_rows(path, path.read_bytes())}
  print(f'{modality} query {value!r} -> {target} of {len(lines)} items in {args.manifest} '
        f'(run {args.workdir} step {run.step}; vectors {cache})')
  print(f'{"rank":>4}  {"cosine":>7}  {"line":>5}  item')
  for rank, (i, score) in enumerate(zip(order, scores), 1):
    cells = rows[int(lines[i])]
    item = cells.get(target, '')
    if target != 'text' and cells.get('text'):
      item += f'  ({cells["text"]})'
    print(f'{rank:>4}  {score:7.4f}  {int(lines[i]):>5}  {item}')
  sheet = args.sheet or os.path.join(args.workdir, search.CACHE_DIR, 'last.png')
  search.contact_sheet(sheet, args.manifest, f'{modality} {value}', lines[order], scores)
  print(f'contact sheet: {sheet}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
