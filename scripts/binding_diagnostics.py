r"""Why a fusion does or does not bind on grid tasks: the fusion alone, trained on given tokens.

Two sources of tokens, the same fusion and head, trained alone (Adam, constant learning rate):

  synthetic: every image token is its cell's digit embedding, every audio token the spoken
    digit's (independent random embeddings per modality, so the fusion must learn to align them),
    plus Gaussian noise, drawn per token or (--shared_noise) once per audio clip. This asks
    whether the block can bind at all, and how fast as the tokens carry less of their digit.
  towers: the tokens that the encoders of a trained run (`--towers=<workdir>`, best checkpoint,
    encoders run in inference mode) give on the grid task's images and audio. Also reports how
    much of each token's variance its digit explains (R^2 at fixed token position), the quantity
    the synthetic noise controls.

  python scripts/binding_diagnostics.py synthetic --noise=0.5 --steps=2000
  python scripts/binding_diagnostics.py towers --towers=runs/bind_diag/digit_towers_md \
      --steps=3000

Prints (and with --out writes) a first JSON line with the setup and the tokens' R^2, then one
every --log_every steps (train loss and accuracy over those steps; for towers also validation
accuracy). docs/results.md, "Where fusion must bind", reads these.
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from crossmodal import config_utils  # pylint: disable=wrong-import-position
from crossmodal.data import avmnist_tasks  # pylint: disable=wrong-import-position
from crossmodal.models import fusion as fusion_lib  # pylint: disable=wrong-import-position
from crossmodal.models.encoders import Encoded  # pylint: disable=wrong-import-position

GRID_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                           'experiments', 'avmnist_grid.py')


def digit_r2(tokens: np.ndarray, digits: np.ndarray) -> float:
  """Share of the variance of tokens [N, D] explained by their digit [N] (between-class sum of
  squares over total), the R^2 of the best digit-only predictor."""
  tokens = tokens.astype(np.float64)
  centred = tokens - tokens.mean(0)
  means = np.zeros((10, tokens.shape[1]))
  for k in np.unique(digits):
    means[k] = tokens[digits == k].mean(0) - tokens.mean(0)
  return float((means[digits] ** 2).sum() / (centred ** 2).sum())


def _cells(tokens: int, grid: int) -> tuple[np.ndarray, np.ndarray]:
  """(the cell each of a square map's tokens lies in most, whether it lies wholly in it)."""
  side = int(round(tokens ** 0.5))
  share = avmnist_tasks.cell_of_token(side, side, avmnist_tasks.layout(f'grid{grid}'))
  return share.argmax(0), np.isclose(share.max(0), 1)


def token_r2(image: np.ndarray, audio: np.ndarray, image_digits: np.ndarray,
             spoken: np.ndarray, grid: int) -> dict[str, float]:
  """Mean over token positions of digit_r2: image tokens [N, h*w, D] that lie wholly in one cell
  (against that cell's digit, image_digits [N, cells]), audio tokens [N, T, D] (against the
  spoken digit [N])."""
  cell, whole = _cells(image.shape[1], grid)
  whole = np.where(whole)[0]
  return {'image_token_r2': float(np.mean([digit_r2(image[:, t], image_digits[:, cell[t]])
                                           for t in whole])),
          'audio_token_r2': float(np.mean([digit_r2(audio[:, t], spoken)
                                           for t in range(audio.shape[1])]))}


def pool_tokens(image: np.ndarray, grid: int) -> np.ndarray:
  """Image tokens [N, h*w, D] with each token replaced by the mean of the tokens that lie
  wholly in its cell (the token's cell: where most of it lies)."""
  cell, whole = _cells(image.shape[1], grid)
  means = np.stack([image[:, whole & (cell == c)].mean(1) for c in range(grid * grid)], 1)
  return means[:, cell]


# ----------------------------------------------------------------------------- token sources


def synthetic_tokens(rng: np.random.Generator, size: int, grid: int, noise: float,
                     audio_noise: float, embeddings: tuple[np.ndarray, np.ndarray], side: int = 7,
                     audio_tokens: int = 24, shared_noise: bool = False,
                     shared_image_noise: bool = False) -> dict[str, np.ndarray]:
  """A batch of synthetic grid examples (module docstring), with provenance. shared_noise:
  one draw of audio noise per clip, the same for all its tokens (as a speaker's voice is);
  shared_image_noise: one draw of image noise per cell (as a digit's handwriting is)."""
  e_image, e_audio = embeddings
  dim = e_image.shape[1]
  cells = grid * grid
  digits = np.stack([rng.choice(10, cells, replace=False) for _ in range(size)])
  label = rng.integers(0, cells, size)
  spoken = digits[np.arange(size), label]
  cell = avmnist_tasks.cell_of_token(side, side, avmnist_tasks.layout(f'grid{grid}')).argmax(0)
  if shared_image_noise:
    image_noise = rng.normal(size=(size, cells, dim))[:, cell]
  else:
    image_noise = rng.normal(size=(size, side * side, dim))
  image = e_image[digits[:, cell]] + noise * image_noise
  audio = e_audio[spoken][:, None] + audio_noise * rng.normal(
      size=(size, 1 if shared_noise else audio_tokens, dim))
  audio = np.broadcast_to(audio, (size, audio_tokens, dim))
  return {'image': image.astype(np.float32), 'audio': audio.astype(np.float32),
          'label': label, 'image_digits': digits, 'spoken_digits': spoken}


def tower_tokens(towers: str, task: str, split: str, size: int, trunk: str = 'to_token_stage'
                 ) -> dict[str, np.ndarray]:
  """Tokens of the encoders of run `towers` (its best checkpoint, in inference mode; `trunk`
  as that run's) on the first `size` examples of `split` of AV-MNIST `task` (clean), with
  provenance. With trunk='full' each modality's last token is its pooled vector."""
  from crossmodal import train  # pylint: disable=import-outside-toplevel
  config = config_utils.load_config_file(
      f'{GRID_CONFIG}:task={task},fusion=crossattn,trunk={trunk},encoders_from={towers}')
  config.data.eval_batch_size = 250
  if trunk == 'full':
    # Towers trained on 28x28 digits flatten a 1x1 final map, which equals averaging it; the
    # grid's larger image gives a larger map, so average it to keep their pool_proj.
    config.model.encoders.image.pool = 'avg'
  run = train._Run(config)  # pylint: disable=protected-access
  state = run.initial_state()
  encoders = {m: run.model.encoder(m) for m in ('image', 'audio')}

  @jax.jit
  def encode(batch):
    out = {}
    for m, enc in encoders.items():
      variables = {'params': state.params[f'{m}_encoder']}
      if f'{m}_encoder' in state.batch_stats:
        variables['batch_stats'] = state.batch_stats[f'{m}_encoder']
      out[m] = enc.apply(variables, batch[m], train=False).tokens
    return out

  keys = ('image', 'audio', 'label')
  parts = {k: [] for k in keys}
  pipeline = run.batches(split)  # one ordered pass: example i is source[i]
  try:
    for batch in pipeline:
      keep = np.asarray(batch['mask'], bool)
      encoded = encode({m: batch[m] for m in encoders})
      for k in keys:
        parts[k].append(np.asarray(encoded[k] if k in encoders else batch[k])[keep])
      if sum(len(p) for p in parts['label']) >= size:
        break
  finally:
    pipeline.close()
  out = {k: np.concatenate(v)[:size] for k, v in parts.items()}
  source = run.source(split)  # the pipeline keeps only what the model reads: provenance here
  examples = [source[i] for i in range(len(out['label']))]
  if not all(int(e['label']) == y for e, y in zip(examples, out['label'])):
    raise RuntimeError(f'{split}: batches are not in source order; cannot attach provenance')
  out['image_digits'] = np.stack([e['image_digits'] for e in examples])
  out['spoken_digits'] = np.array([e['spoken_digits'][0] for e in examples])
  return out


# ----------------------------------------------------------------------------- training


def train_fusion(fusion_cfg, sample, grid: int, steps: int, lr: float, seed: int,
                 log_every: int, validation=None, batch_size: int = 64):
  """Trains fusion + head on batches from `sample(rng, size)`; yields a log dict per
  `log_every` steps."""
  model = fusion_lib.build_fusion(fusion_cfg, modalities=('image', 'audio'),
                                  num_classes=grid * grid, head_hidden=(100,))

  def encoded(batch):
    return {m: Encoded(jnp.asarray(batch[m], jnp.float32),
                       jnp.ones(batch[m].shape[:2], bool), None) for m in ('image', 'audio')}

  rng = np.random.default_rng(seed)
  params = model.init({'params': jax.random.key(seed)}, encoded(sample(rng, 2)))
  tx = optax.adam(lr)
  opt_state = tx.init(params)

  @jax.jit
  def step(params, opt_state, batch, label, key):
    def loss_fn(p):
      logits = model.apply(p, batch, train=True, rngs={'dropout': key})['logits']
      loss = optax.softmax_cross_entropy_with_integer_labels(logits, label).mean()
      return loss, (logits.argmax(-1) == label).mean()
    (loss, acc), grads = jax.value_and_grad(loss_fn, has_aux=True)(params)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss, acc

  predict = jax.jit(lambda p, batch: model.apply(p, batch)['logits'].argmax(-1))
  history, start = [], time.time()
  for i in range(steps):
    batch = sample(rng, batch_size)
    params, opt_state, loss, acc = step(params, opt_state, encoded(batch),
                                        jnp.asarray(batch['label']), jax.random.key(i))
    history.append((float(loss), float(acc)))
    if (i + 1) % log_every == 0:
      h = np.asarray(history[-log_every:])
      log = {'step': i + 1, 'train_loss': round(float(h[:, 0].mean()), 4),
             'train_accuracy': round(float(h[:, 1].mean()), 4),
             'seconds': round(time.time() - start, 1)}
      if validation is not None:
        hits = [np.asarray(predict(params, encoded({m: validation[m][j:j + 250]
                                                     for m in ('image', 'audio')})))
                == validation['label'][j:j + 250] for j in range(0, len(validation['label']), 250)]
        log['validation_accuracy'] = round(float(np.concatenate(hits).mean()), 4)
      yield log


def main(argv=None) -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('source', choices=('synthetic', 'towers'))
  parser.add_argument('--towers', default='', help='workdir of the run whose encoders to read')
  parser.add_argument('--task', default='grid2', choices=('grid2', 'grid3'))
  parser.add_argument('--noise', type=float, default=0.5, help='synthetic: noise std')
  parser.add_argument('--audio_noise', type=float, default=None,
                      help='synthetic: noise std of the audio tokens (default --noise)')
  parser.add_argument('--shared_noise', action='store_true',
                      help='synthetic: the same audio noise for every token of a clip')
  parser.add_argument('--shared_image_noise', action='store_true',
                      help='synthetic: the same image noise for every token of a cell')
  parser.add_argument('--fusion', default='crossattn', choices=('crossattn', 'joint'))
  parser.add_argument('--set', action='append', default=[], metavar='FIELD=VALUE',
                      help='a fusion config field, e.g. --set=combine=residual')
  parser.add_argument('--steps', type=int, default=2000)
  parser.add_argument('--lr', type=float, default=1e-3)
  parser.add_argument('--seed', type=int, default=0)
  parser.add_argument('--log_every', type=int, default=250)
  parser.add_argument('--train_examples', type=int, default=30000)
  parser.add_argument('--trunk', default='to_token_stage', choices=('to_token_stage', 'full'),
                      help="towers: the towers run's trunk (full adds the pooled vector as a "
                      'last token)')
  parser.add_argument('--pool_tokens', default='', help="towers: comma-separated modalities "
                      "whose tokens are replaced by their mean (audio: over the clip; image: over "
                      "the tokens wholly in the token's cell), i.e. object-level tokens")
  parser.add_argument('--out', default='', help='also write the JSON lines to this file')
  args = parser.parse_args(argv)
  grid = int(args.task[-1])
  fields = fusion_lib.fusion_config(args.fusion)
  overrides = {k: config_utils._convert(k, v, fields[k])  # pylint: disable=protected-access
               for k, v in (s.split('=', 1) for s in args.set)}
  fusion_cfg = fusion_lib.fusion_config(args.fusion, **overrides)
  info = {'source': args.source, 'fusion': args.fusion, 'overrides': overrides,
          'task': args.task, 'lr': args.lr, 'seed': args.seed}
  validation = None
  if args.source == 'synthetic':
    audio_noise = args.noise if args.audio_noise is None else args.audio_noise
    info.update(noise=args.noise, audio_noise=audio_noise, shared_noise=args.shared_noise)
    if args.shared_image_noise:
      info['shared_image_noise'] = True
    e_rng = np.random.default_rng(1000 + args.seed)
    embeddings = tuple(e_rng.normal(size=(10, 64)).astype(np.float32) for _ in range(2))
    sample = lambda rng, size: synthetic_tokens(rng, size, grid, args.noise, audio_noise,
                                                    embeddings, shared_noise=args.shared_noise,
                                                    shared_image_noise=args.shared_image_noise)
    probe = sample(np.random.default_rng(1), 4000)
  else:
    if not args.towers:
      parser.error('towers: give --towers=<workdir of a trained run>')
    pooled = [m for m in args.pool_tokens.split(',') if m]
    if set(pooled) - {'image', 'audio'}:
      parser.error(f'--pool_tokens={args.pool_tokens!r}: give image and/or audio')
    if pooled and args.trunk == 'full':
      parser.error('--pool_tokens reads a square token map; use it with --trunk=to_token_stage')
    info.update(towers=args.towers, trunk=args.trunk)
    data = tower_tokens(args.towers, args.task, 'train', args.train_examples, args.trunk)
    validation = tower_tokens(args.towers, args.task, 'validation', 5000, args.trunk)
    for d in (data, validation):
      for m in pooled:
        d[m] = pool_tokens(d[m], grid) if m == 'image' else np.broadcast_to(
            d[m].mean(1, keepdims=True), d[m].shape).copy()
    info['pool_tokens'] = pooled

    def sample(rng, size):
      rows = rng.integers(0, len(data['label']), size)
      return {k: v[rows] for k, v in data.items()}
    probe = {k: v[:8000] for k, v in data.items()}
  summary = args.source == 'towers' and args.trunk == 'full'  # last token: the pooled vector
  cut = slice(None, -1 if summary else None)
  info.update(token_r2(probe['image'][:, cut], probe['audio'][:, cut], probe['image_digits'],
                       probe['spoken_digits'], grid))
  if summary:
    info['audio_summary_r2'] = digit_r2(probe['audio'][:, -1], probe['spoken_digits'])
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  with open(args.out or os.devnull, 'w', encoding='utf-8') as out:
    print(json.dumps(info), flush=True)
    out.write(json.dumps(info) + '\n')
    for log in train_fusion(fusion_cfg, sample, grid, args.steps, args.lr, args.seed,
                            args.log_every, validation):
      print(json.dumps(log), flush=True)
      out.write(json.dumps(log) + '\n')
      out.flush()


if __name__ == '__main__':
  main()
