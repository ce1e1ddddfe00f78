"""Ranking your own collection by a query in another modality (scripts/search.py).

A contrastive run aligned the pooled vectors of two modalities (`config.objectives.contrastive.
pair`): a caption's vector lies near its image's. Search embeds every item of a manifest once
with the encoder of the modality it ranks (cached beside the run's checkpoints, in
`<workdir>/search_cache/`), embeds the query (a text, an audio file or an image) with the
encoder of its own modality, and ranks the items by cosine similarity. Only the two encoders
run: a query never needs the fusion, and a collection needs no labels, splits or prepared
dataset. Items and queries are read exactly as the run's training manifest was (image size,
sample rate, clip length, text length and case), so a run must have trained on a manifest.
"""
from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import textwrap
from pathlib import Path
from typing import Any, Mapping, Sequence

import jax
import ml_collections
import numpy as np

from crossmodal import objectives as objectives_lib
from crossmodal import schema
from crossmodal import transfer
from crossmodal.data import datasets
from crossmodal.data import input_pipeline
from crossmodal.data import manifest as manifest_lib
from crossmodal.models import model as model_lib
from crossmodal.models import text as text_lib

CACHE_DIR = 'search_cache'
# The options a run's manifest was read with, which items and queries are read with too.
_READ = ('image_size', 'image_channels', 'sample_rate', 'clip_seconds', 'resample', 'mono')


@dataclasses.dataclass(frozen=True)
class Run:
  """A trained run's two aligned encoders: {modality: (flax module, its variables)}."""
  workdir: str
  step: int
  pair: tuple[str, str]
  encoders: Mapping[str, tuple[Any, Mapping[str, Any]]]
  data: Mapping[str, Any]  # the manifest options: _READ, text_length, lowercase


def _tuples(x: Any) -> Any:
  if isinstance(x, Mapping):
    return {k: _tuples(v) for k, v in x.items()}
  return tuple(_tuples(v) for v in x) if isinstance(x, list) else x


def recorded_config(workdir: str) -> ml_collections.ConfigDict:
  """The run's config.json (lists as tuples, as the config files write them)."""
  path = Path(workdir) / 'config.json'
  if not path.is_file():
    raise schema.ConfigError(f'--workdir={workdir!r} has no config.json: not a training run '
                             "directory (python -m crossmodal.main ... --workdir=<it>)")
  return ml_collections.ConfigDict(_tuples(json.loads(path.read_text())))


def load(workdir: str, checkpoint: str = 'best') -> Run:
  """The aligned encoders of the run in `workdir` at `checkpoint` ('best', 'latest', a step)."""
  config = recorded_config(workdir)
  if config.data.get('name') != 'manifest':
    raise schema.ConfigError(
        f"{workdir} trained on config.data.name={config.data.get('name')!r}; search reads items "
        'as the run read a manifest (image size, sample rate, text length): train on a manifest '
        '(experiments/manifest.py; scripts/make_manifest.py writes one for the built-in sources)')
  weights = objectives_lib.weights(config.get('objectives'))
  if not weights.get('contrastive'):
    raise schema.ConfigError(
        f'{workdir} trained no contrastive objective (config.objectives.contrastive.weight=0): '
        'its modalities were never aligned, so their cosine similarity means nothing; train '
        'with experiments/manifest.py:task=contrastive (or both)')
  pair = tuple(config.objectives.contrastive.pair)
  # The encoders do not depend on the class count; the fusion head, which does, is not run.
  model = model_lib.build_model(config.model, 2, dtype=config.train.get('dtype', 'float32'),
                                objectives=config.get('objectives'))
  params, batch_stats, step = transfer.restore(workdir, checkpoint)
  encoders = {}
  for m in pair:
    name = f'{m}_encoder'
    if name not in params:
      raise schema.ConfigError(f'the checkpoint of {workdir} (step {step}) has no params/{name} '
                               f'(it has {sorted(params)}): a checkpoint of another model than '
                               'its config.json describes')
    variables = {'params': params[name]}
    if name in batch_stats:
      variables['batch_stats'] = batch_stats[name]
    module = model.encoder(m).clone(name=None, parent=None)
    encoders[m] = (module, variables)
  data = {k: datasets.option(config.data, k) for k in (*_READ, 'text_length', 'lowercase')}
  run = Run(workdir, step, pair, encoders, data)
  for m, (module, variables) in encoders.items():  # a checkpoint of another model: named
    sample = _model_inputs(run, m, [_blank(run, m)])
    ours = jax.eval_shape(lambda x, module=module: module.init(jax.random.key(0), x), sample)
    transfer.check_same(variables['params'], ours['params'],
                        f'{workdir} step {step} params/{m}_encoder',
                        f"the {m} encoder its config.json describes", '--workdir')
  return run


def _blank(run: Run, modality: str) -> dict[str, Any]:
  if modality == 'text':
    return {'text': ''}
  if modality == 'image':
    size, channels = run.data['image_size'], run.data['image_channels']
    return {'image': np.zeros((size, size, channels), np.uint8)}
  return {'audio': np.zeros(int(round(run.data['sample_rate'] * run.data['clip_seconds'])),
                            np.int16)}


def target_of(run: Run, query_modality: str, target: str = '') -> str:
  """The modality to rank for a query of `query_modality`: the other end of the pair."""
  if query_modality not in run.pair:
    raise schema.ConfigError(f'{run.workdir} aligned {list(run.pair)}: a {query_modality} query '
                             f'has no aligned partner; query with one of {list(run.pair)}')
  target = target or next(m for m in run.pair if m != query_modality)
  if target not in run.pair:
    raise schema.ConfigError(f'--target={target!r}: the run aligned {list(run.pair)}')
  return target


def _model_inputs(run: Run, modality: str, examples: Sequence[Mapping[str, Any]]) -> np.ndarray:
  if modality == 'text':
    texts = [e['text'] for e in examples]
    texts = [t.decode('utf-8') if isinstance(t, bytes) else t for t in texts]
    return text_lib.encode([t.lower() if run.data['lowercase'] else t for t in texts],
                           int(run.data['text_length']))
  return np.stack([input_pipeline.to_model_example({modality: e[modality]})[modality]
                   for e in examples])


def embed(run: Run, modality: str, examples: Sequence[Mapping[str, Any]],
          batch_size: int = 256) -> np.ndarray:
  """float32 [N, D] unit vectors of `examples` (decoded manifest rows) by the run's encoder."""
  module, variables = run.encoders[modality]
  forward = jax.jit(lambda v, x: module.apply(v, x, train=False).pooled)
  out = []
  for start in range(0, len(examples), batch_size):
    chunk = _model_inputs(run, modality, examples[start:start + batch_size])
    n = len(chunk)
    if n < batch_size and len(examples) > batch_size:  # one compiled shape: pad the last
      chunk = np.concatenate([chunk, np.repeat(chunk[-1:], batch_size - n, 0)])
    out.append(np.asarray(forward(variables, chunk), np.float32)[:n])
  vectors = np.concatenate(out)
  return vectors / np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)


def collection_config(run: Run, path: str, modality: str,
                      on_error: str = 'raise') -> manifest_lib.ManifestConfig:
  """How the collection's rows are read: the run's options, only `modality`, rows without it
  allowed (they are not ranked)."""
  options = {k: run.data[k] for k in _READ}
  return manifest_lib.manifest_config(path, modalities=(modality,), missing_ok=(modality,),
                                      on_error=on_error, **options)


def _cache_key(run: Run, cfg: manifest_lib.ManifestConfig) -> str:
  """Changes with the checkpoint, the manifest's bytes and options, and any file it names."""
  rows = manifest_lib.read_rows(Path(cfg.path), Path(cfg.path).read_bytes())
  files = []
  for _, _, cells in rows:
    value = cells.get(cfg.modalities[0], '').strip()
    if value and cfg.modalities[0] != 'text':
      p = manifest_lib.resolve(Path(cfg.path), value)
      st = p.stat() if p.exists() else None
      files.append((str(p), st.st_size if st else -1, st.st_mtime_ns if st else -1))
  h = hashlib.sha256(json.dumps([os.path.abspath(run.workdir), run.step, cfg.name,
                                 run.data['text_length'], run.data['lowercase'], cfg.on_error,
                                 files]).encode())
  return h.hexdigest()[:20]


def collection(run: Run, path: str, modality: str, on_error: str = 'raise'
               ) -> tuple[np.ndarray, np.ndarray, str]:
  """(manifest line of each ranked item, their unit vectors [N, D], the cache file): computed
  once per checkpoint, manifest and file contents, then read from the cache."""
  cfg = collection_config(run, path, modality, on_error)
  cache = Path(run.workdir) / CACHE_DIR / f'{modality}_{_cache_key(run, cfg)}.npz'
  if cache.is_file():
    with np.load(cache) as z:
      return z['lines'], z['vectors'], str(cache)
  examples = [e for e in manifest_lib.decode_all(cfg) if e['present'].any()]
  if not examples:
    raise manifest_lib.ManifestError(f'{path}: no row has a {modality}; nothing to rank')
  lines = np.asarray([e['line'] for e in examples], np.int64)
  vectors = embed(run, modality, examples)
  cache.parent.mkdir(parents=True, exist_ok=True)
  partial = cache.with_suffix('.partial.npz')
  np.savez(partial, lines=lines, vectors=vectors)
  os.replace(partial, cache)  # a half-written cache never looks finished
  return lines, vectors, str(cache)


def query_example(run: Run, modality: str, value: str) -> dict[str, Any]:
  """A query (a text, or the path of an audio file or image) decoded as the manifest's rows."""
  if modality == 'text':
    if not value:
      raise schema.ConfigError('the text query is empty')
    return {'text': value}
  path = Path(value).expanduser()
  if not path.is_file():
    raise schema.ConfigError(f'the {modality} query {path} does not exist')
  try:
    if modality == 'image':
      return {'image': manifest_lib.read_image(path, run.data['image_size'],
                                               run.data['image_channels'])}
    audio, _ = manifest_lib.read_audio(path, sample_rate=run.data['sample_rate'],
                                       clip_samples=len(_blank(run, 'audio')['audio']), resample=run.data['resample'],
                                       mono=run.data['mono'])
    return {'audio': audio}
  except (OSError, ValueError, SyntaxError) as e:
    raise schema.ConfigError(f'the {modality} query {path} cannot be read: {e}') from None


def top_k(query: np.ndarray, vectors: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
  """(indices, cosine scores) of the k best items, best first (ties: earlier row first)."""
  scores = vectors @ query
  order = np.argsort(-scores, kind='stable')[:k]
  return order, scores[order]


def contact_sheet(out: str, manifest_path: str, query: str, lines: Sequence[int],
                  scores: Sequence[float], tile: int = 128) -> str:
  """A PNG of the hits, best first: each row's image (if it has one) or its text, captioned
  with rank, cosine score and the row's text or file name; the query heads the sheet."""
  from PIL import Image, ImageDraw  # pylint: disable=import-outside-toplevel
  path = Path(manifest_path)
  rows = {line: cells for line, _, cells in manifest_lib.read_rows(path, path.read_bytes())}
  cols = min(5, max(1, len(lines)))
  caption, head = 28, 24
  sheet = Image.new('RGB', (cols * tile, head + -(-len(lines) // cols) * (tile + caption)),
                    'white')
  draw = ImageDraw.Draw(sheet)
  draw.text((4, 6), f'query: {query}'[:cols * tile // 6], fill='black')
  for i, (line, score) in enumerate(zip(lines, scores)):
    cells = rows[int(line)]
    x, y = (i % cols) * tile, head + (i // cols) * (tile + caption)
    picture = cells.get('image', '').strip()
    name = cells.get('text', '') or os.path.basename(picture or cells.get('audio', ''))
    if picture:
      try:
        image = manifest_lib.read_image(manifest_lib.resolve(path, picture), tile, 3)
        sheet.paste(Image.fromarray(image), (x, y))
      except (OSError, ValueError, SyntaxError):
        picture = ''
    if not picture:  # no image: the text, wrapped
      for n, text in enumerate(textwrap.wrap(name or '(no text)', tile // 7)[:tile // 13]):
        draw.text((x + 4, y + 4 + 12 * n), text, fill='black')
    draw.text((x + 4, y + tile + 2), f'{i + 1}. {score:.3f}', fill='black')
    draw.text((x + 4, y + tile + 14), name[:tile // 6], fill='gray')
  Path(out).parent.mkdir(parents=True, exist_ok=True)
  sheet.save(out)
  return out
