r"""Prints trainable parameter counts for every encoder x fusion variant, to compare ablations.

Counts come from `jax.eval_shape` of the model's init, so nothing is computed or compiled and
the whole table takes seconds. Input shapes are AV-MNIST's by default (28x28x1 images, 1 s of
8 kHz audio); the counts of patch-based encoders and positional embeddings depend on them.

  python scripts/param_count.py                                  # AV-MNIST, all fusions
  python scripts/param_count.py --modalities=image,text --dim=128
  python scripts/param_count.py --fusions=concat,crossattn --image_size=32 --channels=3
"""
from __future__ import annotations

import argparse
import itertools
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp

from crossmodal.models import encoders as encoders_lib
from crossmodal.models import fusion as fusion_lib
from crossmodal.models import model as model_lib


def sample_batch(modalities: Sequence[str], image_size: int = 28, channels: int = 1,
                 audio_samples: int = 8000, text_len: int = 64) -> dict[str, Any]:
  """Abstract batch (ShapeDtypeStructs) following the batch contract."""
  shapes = {'image': ((2, image_size, image_size, channels), jnp.uint8),
            'audio': ((2, audio_samples), jnp.float32),
            'text': ((2, text_len), jnp.int32)}
  return {m: jax.ShapeDtypeStruct(*shapes[m]) for m in modalities}


def param_table(modalities: Sequence[str] = ('image', 'audio'), dim: int = 64,
                num_classes: int = 10, fusions: Sequence[str] | None = None,
                **batch_kwargs) -> list[dict[str, Any]]:
  """One row per (encoder combination, fusion): {'encoders', 'fusion', 'total', 'parts'}."""
  modalities = tuple(modalities)
  fusions = tuple(fusions or fusion_lib.FUSIONS)
  batch = sample_batch(modalities, **batch_kwargs)
  rows = []
  for combo in itertools.product(*(sorted(encoders_lib.ENCODERS[m]) for m in modalities)):
    types = dict(zip(modalities, combo))
    for fusion in fusions:
      cfg = model_lib.default_model_config(modalities, fusion, dim=dim, encoders=types)
      model = model_lib.build_model(cfg, num_classes)
      variables = jax.eval_shape(model.init, jax.random.PRNGKey(0), batch)
      rows.append({'encoders': types, 'fusion': fusion,
                   'total': model_lib.count_params(variables),
                   'parts': model_lib.param_counts_by_part(variables)})
  return rows


def format_table(rows: list[dict[str, Any]]) -> str:
  """Encoder sizes, then total parameters with fusions as rows and encoder combos as columns."""
  lines = ['Encoders (parameters, including the projection to dim):']
  seen = {}
  for row in rows:
    for m, kind in row['encoders'].items():
      seen[f'{m}/{kind}'] = row['parts'][f'{m}_encoder']
  lines += [f'  {name:<20} {count:>12,}' for name, count in sorted(seen.items())]
  combos = list(dict.fromkeys(' '.join(f'{m}={k}' for m, k in r['encoders'].items())
                              for r in rows))
  fusions = list(dict.fromkeys(r['fusion'] for r in rows))
  width = max(12, *(len(c) for c in combos)) + 2
  lines += ['', 'Total parameters (fusion part in brackets: encoders are the rest):',
            f'{"fusion":<16}' + ''.join(f'{c:>{width}}' for c in combos)]
  cells = {(r['fusion'], ' '.join(f'{m}={k}' for m, k in r['encoders'].items())): r
           for r in rows}
  for fusion in fusions:
    line = f'{fusion:<16}'
    for combo in combos:
      r = cells[fusion, combo]
      line += f'{r["total"]:,} ({r["parts"]["fusion"]:,})'.rjust(width)
    lines.append(line)
  return '\n'.join(lines)


def main(argv: Sequence[str] | None = None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--modalities', default='image,audio',
                      help=f'comma-separated, from {sorted(encoders_lib.ENCODERS)}')
  parser.add_argument('--fusions', default=','.join(fusion_lib.FUSIONS),
                      help=f'comma-separated, from {list(fusion_lib.FUSIONS)}')
  parser.add_argument('--dim', type=int, default=64, help='config.model.dim')
  parser.add_argument('--num_classes', type=int, default=10)
  parser.add_argument('--image_size', type=int, default=28)
  parser.add_argument('--channels', type=int, default=1)
  parser.add_argument('--audio_samples', type=int, default=8000)
  parser.add_argument('--text_len', type=int, default=64)
  args = parser.parse_args(argv)
  rows = param_table(args.modalities.split(','), args.dim, args.num_classes,
                     args.fusions.split(','), image_size=args.image_size,
                     channels=args.channels, audio_samples=args.audio_samples,
                     text_len=args.text_len)
  print(format_table(rows))


if __name__ == '__main__':
  main()
