"""Evaluators run on a trained checkpoint (`--mode=eval`, and at the end of train_and_eval),
in the style of big_vision's evaluators: `config.evaluators` maps a name from `EVALUATORS` to
its options, each writes one record (split `eval_<name>`) to metrics.jsonl / TensorBoard, and
pictures go to `<workdir>/eval/`.

  retrieval       cosine similarity between two modalities' pooled vectors over a whole
                  split, ranked in blocks (memory stays [block, N]): recall@1/5/10 and median
                  rank in both directions, a hit counted by instance (the paired example)
                  and by class (any example of the query's class); for text and image,
                  optionally a PNG of the top-5 images for a few text queries
  zero_shot       classify images by the cosine similarity of their pooled vector to the
                  text vectors of the class names (CLIP's zero-shot classification)
  robustness      accuracy with each modality missing (the model's `present` mask), and as
                  noise grows on each modality (NOISES, levels in [0, 1]), with the relative
                  robustness of each curve (area under accuracy vs level, MultiBench);
                  effective robustness compares runs: scripts/robustness_report.py
  reconstruction  a PNG grid of images decoded from the source modality, one row per class,
                  and how often a decoded image is nearest to its own class's mean image
                  (beside the same score for the real images)
  attention       PNG maps of an attention fusion's attention weights for a few examples

Classification on `train.eval_splits` always runs (train.evaluate); these come after it.
"""
from __future__ import annotations

import io
import os
from typing import Any, Callable, Mapping, Sequence

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from crossmodal import files
from crossmodal import objectives as objectives_lib
from crossmodal.data import noise as noise_lib
from crossmodal.models import fusion as fusion_lib

EVAL_DIR = 'eval'
LEVELS = (0.0, 0.2, 0.4, 0.6, 0.8, 1.0)


def evaluator_config(name: str, **overrides: Any) -> ml_collections.ConfigDict:
  """Default options of evaluator `name`."""
  defaults = {
      'retrieval': dict(split='test', pair=('audio', 'image'), ks=(1, 5, 10), block=1024,
                        picture_queries=0),
      'zero_shot': dict(split='test', template='{}'),
      'robustness': dict(split='test', levels=LEVELS, max_examples=0, seed=0,
                         noises=ml_collections.ConfigDict(
                             {m: tuple(kinds) for m, kinds in noise_lib.NOISES.items()})),
      'reconstruction': dict(split='test', per_class=8),
      'attention': dict(split='test', num_examples=4),
  }
  if name not in defaults:
    raise ValueError(f'unknown evaluator {name!r}; valid choices: {sorted(defaults)}')
  c = ml_collections.ConfigDict(defaults[name])
  c.update(overrides)
  return c


# ----------------------------------------------------------------------------- forward passes


def make_forward(model, variables_fn: Callable[[Any], Any], strategy):
  """forward_for(select, keep=(), attention=False) -> jit(state, batch, present) ->
  {**select(outputs), 'label', 'mask', **batch[keep]}, replicated: every process fetches the
  global batch, so multi-host evaluation sees every example once. Only what `select` picks
  leaves the device. One compiled function per (select, keep, attention): callers reuse their
  `select` across passes. `strategy` is a JitParallel on the run's mesh whatever
  `train.parallel` is (checkpoints are replicated global arrays), and `model` one built
  without a pmap axis."""
  cache: dict[tuple, Callable] = {}

  def forward_for(select: Callable[[dict], dict], keep: Sequence[str] = (),
                  attention: bool = False) -> Callable:
    key = (select, tuple(keep), attention)
    if key not in cache:
      def forward(state, batch, present):
        out = model.apply(variables_fn(state), batch, present=present, train=False,
                          return_attention=attention)
        return {**select(out), **{k: batch[k] for k in ('label', 'mask', *keep)}}
      cache[key] = jax.jit(forward, in_shardings=(strategy.replicated, strategy.batch_sharding,
                                                  strategy.batch_sharding),
                           out_shardings=strategy.replicated)
    return cache[key]
  return forward_for


def outputs_over_split(run, state, split: str, select: Callable[[dict], dict[str, Any]],
                       transform: Callable[[dict, int], dict] | None = None,
                       present_fn: Callable[[int], np.ndarray] | None = None,
                       max_examples: int = 0, keep: Sequence[str] = (),
                       attention: bool = False) -> dict[str, np.ndarray]:
  """`select(outputs)` (jax arrays -> dict of arrays, traced) of every real example of
  `split`, with `label` and the batch keys in `keep`, concatenated on the host in dataset
  order. transform(batch, batch_index) edits host batches (noise); present_fn(batch_size)
  gives the modality mask."""
  forward = run.evaluator_forward(select, keep, attention)
  strategy = run.eval_strategy
  pipeline = run.batches(split)
  collected: dict[str, list[np.ndarray]] = {}
  seen = 0
  try:
    for i, batch in enumerate(pipeline):
      if max_examples and seen >= max_examples:
        break
      batch = {'mask': np.ones(len(batch['label']), bool), **batch}
      if transform is not None:
        batch = transform(batch, i)
      size = len(batch['label'])
      present = (np.ones((size, len(run.model.modalities)), bool) if present_fn is None
                 else present_fn(size))
      out = forward(state, strategy.put_batch(batch), strategy.put_batch({'p': present})['p'])
      got = {k: np.asarray(strategy.fetch(v)) for k, v in out.items()}
      mask = got.pop('mask').astype(bool)
      for key, value in got.items():
        collected.setdefault(key, []).append(value[mask])
      seen += int(mask.sum())
  finally:
    pipeline.close()
  result = {k: np.concatenate(v) for k, v in collected.items()}
  if max_examples:
    result = {k: v[:max_examples] for k, v in result.items()}
  return result


# ----------------------------------------------------------------------------- retrieval


def _unit(x: np.ndarray) -> np.ndarray:
  return x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)


def retrieval_ranks(queries: np.ndarray, keys: np.ndarray, query_labels: np.ndarray,
                    key_labels: np.ndarray, block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
  """1-based rank of each query's paired key (query i <-> key i) and of its best-ranked
  same-class key, by cosine similarity; ties count against the query (a key scoring the same
  as the hit, and not itself a hit, is ranked before it)."""
  q, k = _unit(queries), _unit(keys)
  instance = np.empty(len(q), np.int64)
  by_class = np.empty(len(q), np.int64)
  for start in range(0, len(q), block):
    sim = q[start:start + block] @ k.T  # [b, N]
    rows = np.arange(sim.shape[0])
    own = sim[rows, start + rows]
    # Rank of the paired key: keys scoring higher, plus other keys tied with it.
    instance[start:start + block] = (sim >= own[:, None]).sum(1)
    same = query_labels[start:start + block, None] == key_labels[None, :]
    best_same = np.where(same, sim, -np.inf).max(1)[:, None]
    by_class[start:start + block] = ((sim > best_same) | ((sim == best_same) & ~same)).sum(1) + 1
  return instance, by_class


def retrieval_summary(instance: np.ndarray, by_class: np.ndarray,
                      ks: Sequence[int]) -> dict[str, float]:
  out = {}
  for name, ranks in (('instance', instance), ('class', by_class)):
    for k in ks:
      out[f'{name}/recall@{k}'] = float(np.mean(ranks <= k))
    out[f'{name}/median_rank'] = float(np.median(ranks))
  return out


def chance_class_recall(labels: np.ndarray) -> float:
  """Class recall@1 of a random ranking: a random key shares a random query's class with
  probability sum_c p_c^2 (0.1 for 10 balanced classes)."""
  return float(np.sum((np.bincount(labels) / len(labels)) ** 2))


def retrieval(run, state, options, workdir: str) -> dict[str, Any]:
  first, second = options.pair
  missing = [m for m in (first, second) if m not in run.model.modalities]
  if missing:
    raise ValueError(f'evaluators.retrieval.pair={tuple(options.pair)}: the model has no '
                     f'{missing} (modalities {list(run.model.modalities)})')

  def select(out):
    absent = [m for m in (first, second) if m not in out['embeddings']]
    if absent:
      raise ValueError(f'evaluators.retrieval: the model computes no pooled vector for '
                       f'{absent} (conv encoders under an attention fusion stop at their token '
                       'stage); train with an embedding objective, e.g. '
                       '--config.objectives.contrastive.weight=1')
    return {f'vector/{m}': out['embeddings'][m] for m in (first, second)}

  picture = int(options.get('picture_queries', 0)) > 0
  got = outputs_over_split(run, state, options.split, select,
                           keep=('image', 'text') if picture else ())
  labels = got['label']
  summary: dict[str, Any] = {'num_examples': int(len(labels)),
                             'chance/class_recall@1': chance_class_recall(labels)}
  for a, b in ((first, second), (second, first)):
    instance, by_class = retrieval_ranks(got[f'vector/{a}'], got[f'vector/{b}'], labels, labels,
                                         options.block)
    summary.update({f'{a}_to_{b}/{k}': v for k, v in
                    retrieval_summary(instance, by_class, options.ks).items()})
  if picture:
    summary['picture'] = _top_images_picture(got, int(options.picture_queries), workdir)
  return summary


def _top_images_picture(got: Mapping[str, np.ndarray], num_queries: int, workdir: str,
                        k: int = 5) -> str:
  """PNG: for text queries spread over the split, the query's own image, then the k images
  ranked first (a green frame marks the query's own image among them)."""
  from crossmodal.models import text as text_lib  # pylint: disable=import-outside-toplevel
  queries = np.linspace(0, len(got['label']) - 1, num_queries).round().astype(int)
  sim = _unit(got['vector/text'][queries]) @ _unit(got['vector/image']).T
  plt = _pyplot()
  fig, axes = plt.subplots(num_queries, k + 1, figsize=(1.3 * (k + 1), 1.5 * num_queries),
                           squeeze=False)
  for row, q in enumerate(queries):
    top = np.argsort(-sim[row], kind='stable')[:k]
    axes[row, 0].imshow(got['image'][q])
    axes[row, 0].set_title(text_lib.decode(got['text'][q])[:28], fontsize=6)
    for col, j in enumerate(top):
      ax = axes[row, col + 1]
      ax.imshow(got['image'][j])
      ax.set_title(f'#{col + 1}', fontsize=6)
      if j == q:
        for spine in ax.spines.values():
          spine.set(color='tab:green', linewidth=2.5)
  for ax in axes.ravel():
    ax.set_xticks([])
    ax.set_yticks([])
  fig.suptitle('text query (its own image) -> top-5 images', fontsize=8)
  fig.tight_layout()
  path = _save(fig, workdir, 'retrieval_text_to_image.png')
  plt.close(fig)
  return path


# ----------------------------------------------------------------------------- zero-shot


def _text_vectors(run, state, ids: np.ndarray, split: str) -> np.ndarray:
  """Pooled text vectors [N, D] of token ids [N, L]: one padded global batch through the
  evaluator forward (the other modalities are zeros; encoders do not see each other)."""
  example = run.source(split)[0]
  n, devices, processes = len(ids), jax.device_count(), jax.process_count()
  size = -(-n // devices) * devices
  batch = {m: np.zeros((size,) + np.shape(example[m]), np.asarray(example[m]).dtype)
           for m in run.model.modalities}
  batch['text'] = np.zeros((size, ids.shape[1]), np.int32)
  batch['text'][:n] = ids
  batch['label'] = np.zeros(size, np.int32)
  batch['mask'] = np.arange(size) < n
  local = size // processes
  rows = slice(jax.process_index() * local, (jax.process_index() + 1) * local)
  forward = run.evaluator_forward(_select_text)
  strategy = run.eval_strategy
  present = np.ones((local, len(run.model.modalities)), bool)
  out = forward(state, strategy.put_batch({k: v[rows] for k, v in batch.items()}),
                strategy.put_batch({'p': present})['p'])
  return np.asarray(strategy.fetch(out['text']))[:n]


def _select_text(out):
  return {'text': out['embeddings']['text']}


def _select_image(out):
  return {'image': out['embeddings']['image']}


def zero_shot_summary(images: np.ndarray, classes: np.ndarray,
                      labels: np.ndarray) -> dict[str, Any]:
  """Each image vector [N, D] takes the class whose vector [C, D] is most cosine-similar
  (ties go to the lower class index)."""
  order = np.argsort(-(_unit(images) @ _unit(classes).T), axis=1, kind='stable')
  counts = np.bincount(labels, minlength=len(classes))
  return {'num_examples': int(len(labels)), 'num_classes': int(len(classes)),
          'accuracy': float(np.mean(order[:, 0] == labels)),
          'top5_accuracy': float(np.mean((order[:, :5] == labels[:, None]).any(1))),
          # A classifier that always answers the most common test class.
          'majority_class/accuracy': float(counts.max() / len(labels))}


def zero_shot(run, state, options, workdir: str) -> dict[str, Any]:
  from crossmodal.data import datasets  # pylint: disable=import-outside-toplevel
  names = datasets.dataset_info(run.config.data).class_names
  ids = datasets.class_name_tokens(run.config.data, [options.template.format(n) for n in names])
  classes = _text_vectors(run, state, ids, options.split)
  got = outputs_over_split(run, state, options.split, _select_image)
  return zero_shot_summary(got['image'], classes, got['label'])


# ----------------------------------------------------------------------------- robustness


def relative_robustness(levels: Sequence[float], accuracies: Sequence[float]) -> float:
  """Area under accuracy vs noise level (trapezoid), levels spanning [0, 1] (MultiBench's
  relative robustness; 1.0 = perfect accuracy at every level)."""
  levels, accuracies = np.asarray(levels, np.float64), np.asarray(accuracies, np.float64)
  return float(np.sum(np.diff(levels) * (accuracies[1:] + accuracies[:-1]) / 2))


def effective_robustness(accuracies: Sequence[float], reference: Sequence[float]) -> float:
  """MultiBench's effective robustness: the summed gap over levels between a model's curve
  and the reference's (late fusion) curve shifted to start at the model's clean accuracy."""
  f, ref = np.asarray(accuracies, np.float64), np.asarray(reference, np.float64)
  return float(np.sum(f - (ref + f[0] - ref[0])))


def robustness(run, state, options, workdir: str) -> dict[str, Any]:
  modalities = tuple(run.model.modalities)
  levels = tuple(float(l) for l in options.levels)
  select = lambda out: {'pred': jnp.argmax(out['logits'], -1)}

  def accuracy(transform=None, present_fn=None):
    got = outputs_over_split(run, state, options.split, select, transform, present_fn,
                             options.max_examples)
    return float(np.mean(got['pred'] == got['label'])), len(got['label'])

  clean, count = accuracy()
  summary: dict[str, Any] = {'num_examples': count, 'levels': list(levels),
                             'clean/accuracy': clean}
  if len(modalities) > 1:
    for i, m in enumerate(modalities):
      def hide(size, i=i):
        present = np.ones((size, len(modalities)), bool)
        present[:, i] = False
        return present
      summary[f'missing_{m}/accuracy'] = accuracy(present_fn=hide)[0]
  for m in modalities:
    kinds = tuple(options.noises.get(m, ())) if m in options.noises else ()
    areas = []
    for kind in kinds:
      curve = [clean]
      for level in levels[1:]:
        corrupt = noise_lib.make_transform(m, kind, level, seed=options.seed)
        curve.append(accuracy(transform=corrupt)[0])
      summary[f'{m}_{kind}/accuracy'] = curve
      summary[f'{m}_{kind}/relative_robustness'] = relative_robustness(levels, curve)
      areas.append(summary[f'{m}_{kind}/relative_robustness'])
    if areas:
      summary[f'{m}/relative_robustness'] = float(np.mean(areas))
  return summary


# ----------------------------------------------------------------------------- pictures


def _pyplot():
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  return plt


def _save(fig, workdir: str, name: str) -> str:
  """Writes the picture from process 0 only (every process computed the same one)."""
  path = os.path.join(workdir, EVAL_DIR, name)
  if jax.process_index() == 0:
    buffer = io.BytesIO()
    fig.savefig(buffer, format='png', dpi=120, bbox_inches='tight')
    files.write_file(path, buffer.getvalue())
  return path


def reconstruction(run, state, options, workdir: str) -> dict[str, Any]:
  decoder = run.model.decoder
  if decoder is None:
    raise ValueError('evaluators.reconstruction: the model has no decoder; set '
                     'config.objectives.reconstruction.weight > 0 and train')
  source, target, _ = decoder
  got = outputs_over_split(run, state, options.split,
                           lambda out: {'decoded': out['reconstruction']}, keep=(target,))
  targets = got[target].astype(np.float32) / 255.0  # the real images, for the class means
  labels = got['label']
  classes = np.unique(labels)
  means = np.stack([targets[labels == c].mean(0) for c in classes])
  flat = got['decoded'].reshape(len(labels), -1)
  nearest_mean = lambda x: classes[np.argmin(
      ((x[:, None, :] - means.reshape(len(classes), -1)[None]) ** 2).sum(-1), axis=1)]
  plt = _pyplot()
  k = int(options.per_class)
  fig, axes = plt.subplots(len(classes), k + 1, figsize=(k + 1, len(classes)))
  for row, c in enumerate(classes):
    index = np.flatnonzero(labels == c)[:k]
    axes[row, 0].imshow(means[row].squeeze(), cmap='gray', vmin=0, vmax=1)
    for col, j in enumerate(index):
      axes[row, col + 1].imshow(got['decoded'][j].squeeze(), cmap='gray', vmin=0, vmax=1)
  for ax in axes.ravel():
    ax.set_xticks([])
    ax.set_yticks([])
  axes[0, 0].set_title(f'{target}\nclass mean', fontsize=7)
  for col in range(k):
    axes[0, col + 1].set_title(f'from\n{source}', fontsize=7)
  path = _save(fig, workdir, f'reconstruction_{source}_to_{target}.png')
  plt.close(fig)
  return {'num_examples': int(len(labels)),
          'mse': float(np.mean((flat - targets.reshape(len(labels), -1)) ** 2)),
          'nearest_class_mean_accuracy': float(np.mean(nearest_mean(flat) == labels)),
          # The same score for the real target images: what a perfect decoder would get.
          'real/nearest_class_mean_accuracy': float(np.mean(
              nearest_mean(targets.reshape(len(labels), -1)) == labels)),
          'picture': path}


def attention(run, state, options, workdir: str) -> dict[str, Any]:
  n = int(options.num_examples)

  def select(out):
    if not out.get('attention'):
      raise ValueError(f'evaluators.attention: fusion {run.config.model.fusion.type!r} has no '
                       'attention maps (use crossattn, joint or bottleneck)')
    return {f'attn/{k}': v.mean(1) for k, v in out['attention'].items()}  # mean over heads

  got = outputs_over_split(run, state, options.split, select, max_examples=n, attention=True)
  names = sorted(k for k in got if k.startswith('attn/'))
  n = min(n, len(got['label']))
  plt = _pyplot()
  fig, axes = plt.subplots(n, len(names), figsize=(3 * len(names), 3.0 * n), squeeze=False)
  for i in range(n):
    for j, name in enumerate(names):
      ax = axes[i, j]
      ax.imshow(got[name][i], aspect='auto', cmap='viridis')
      ax.set_title(f'{name[5:]} (label {got["label"][i]})', fontsize=7)
      queries, keys = _token_axes(name[5:])
      ax.set_xlabel(f'{keys} token (key)', fontsize=6)
      ax.set_ylabel(f'{queries} token (query)', fontsize=6)
      ax.tick_params(labelsize=5)
  fig.tight_layout()
  path = _save(fig, workdir, 'attention.png')
  plt.close(fig)
  return {'num_examples': n, 'maps': len(names), 'picture': path}


def _token_axes(name: str) -> tuple[str, str]:
  """(query, key) axis names of an attention map (names from fusion.py): crossattn's
  'cross_0/audio->image' has image queries and audio keys, 'self_0/image' image on both;
  bottleneck's 'layer_1/audio' audio tokens, then the bottleneck tokens in fused layers;
  joint's 'layer_0' every modality's tokens in turn."""
  if '/' not in name:
    return 'all modalities', 'all modalities'
  what = name.split('/', 1)[1]
  if '->' in what:
    source, target = what.split('->', 1)
    return target, source
  if name.startswith('layer_'):
    return f'{what} (+ bottleneck)', f'{what} (+ bottleneck)'
  return what, what


EVALUATORS: dict[str, Callable[..., dict[str, Any]]] = {
    'retrieval': retrieval,
    'zero_shot': zero_shot,
    'robustness': robustness,
    'reconstruction': reconstruction,
    'attention': attention,
}


def check_config(evaluators: Mapping[str, Any] | None, model,
                 objectives: Mapping[str, Any] | None = None) -> None:
  """ValueError naming a bad evaluator, option or modality: before training, not after it.

  `model` is the CrossModalModel the config builds; `objectives` is config.objectives.
  """
  modalities = model.modalities
  for name, options in (evaluators or {}).items():
    if name not in EVALUATORS:
      raise ValueError(f'config.evaluators.{name}: unknown evaluator; valid choices: '
                       f'{sorted(EVALUATORS)}')
    defaults = evaluator_config(name)
    unknown = sorted(set(options) - set(defaults))
    if unknown:
      raise ValueError(f'config.evaluators.{name}: unknown option(s) {unknown}; valid: '
                       f'{sorted(defaults)}')
    if name == 'retrieval' and (len(set(options.pair)) != 2
                                or not set(options.pair) <= set(modalities)):
      raise ValueError(f'config.evaluators.retrieval.pair={tuple(options.pair)}: needs two '
                       f'different modalities of {list(modalities)}')
    attention_fusion = fusion_lib.uses_tokens(model.fusion.type)
    if name == 'retrieval' and (int(options.block) < 1 or not options.ks
                                or any(int(k) < 1 for k in options.ks)):
      raise ValueError(f'config.evaluators.retrieval: block={options.block} and '
                       f'ks={tuple(options.ks)} must be positive')
    if name == 'retrieval' and attention_fusion and not model.pooled:
      raise ValueError(f'config.evaluators.retrieval: under fusion={model.fusion.type!r} the '
                       'encoders compute no pooled vector unless an embedding objective '
                       '(contrastive, reconstruction or aux_classification in '
                       'config.objectives) trains one')
    queries = int(options.get('picture_queries', 0)) if name == 'retrieval' else 0
    if queries < 0 or (queries and set(options.pair) != {'image', 'text'}):
      raise ValueError(f'config.evaluators.retrieval.picture_queries={queries}: must be >= 0, '
                       'and pictures need pair=(text, image)')
    if name == 'zero_shot':
      if not {'image', 'text'} <= set(modalities):
        raise ValueError(f'config.evaluators.zero_shot: needs image and text modalities, the '
                         f'model has {list(modalities)}')
      if attention_fusion and not model.pooled:
        raise ValueError('config.evaluators.zero_shot: under an attention fusion the encoders '
                         'compute no pooled vector unless an embedding objective trains one')
      if not _trained_together(objectives, ('image', 'text')):
        # Otherwise the two pooled vectors live in unrelated spaces and the accuracy is noise.
        raise ValueError('config.evaluators.zero_shot: compares image and text embeddings, '
                         'which only a contrastive objective puts in one space; set '
                         'config.objectives.contrastive.weight > 0 with pair=(text, image)')
      if options.template.count('{}') != 1:
        raise ValueError(f'config.evaluators.zero_shot.template={options.template!r}: needs '
                         "exactly one '{}' for the class name")
    if name == 'robustness':
      levels = [float(l) for l in options.levels]
      if len(levels) < 2 or levels[0] != 0.0 or levels != sorted(levels) or levels[-1] != 1.0:
        raise ValueError(f'config.evaluators.robustness.levels={tuple(levels)}: must rise '
                         'from 0 (clean) to 1, so that areas under the curves compare')
      for m, kinds in options.noises.items():
        for kind in kinds:
          if kind not in noise_lib.NOISES.get(m, ()):
            raise ValueError(f'config.evaluators.robustness.noises.{m}: {kind!r}; valid '
                             f'choices: {noise_lib.NOISES.get(m, ())}')
    if name == 'reconstruction' and model.decoder is None:
      raise ValueError('config.evaluators.reconstruction: the model has no decoder; set '
                       'config.objectives.reconstruction.weight > 0')
    if name == 'attention' and not attention_fusion:
      raise ValueError(f'config.evaluators.attention: fusion {model.fusion.type!r} has no '
                       'attention maps (use crossattn, joint or bottleneck)')
    for key in ('num_examples', 'per_class'):
      if key in options and int(options[key]) < 1:
        raise ValueError(f'config.evaluators.{name}.{key}={options[key]}: must be >= 1')


def _trained_together(objectives: Mapping[str, Any] | None, pair: tuple[str, str]) -> bool:
  return ('contrastive' in objectives_lib.active(objectives)
          and set(objectives['contrastive']['pair']) == set(pair))


def run_all(run, state, evaluators: Mapping[str, Any] | None, workdir: str
            ) -> dict[str, dict[str, Any]]:
  """{name: summary} of every evaluator in `config.evaluators`."""
  check_config(evaluators, run.model, run.objectives)
  results = {}
  for name, options in (evaluators or {}).items():
    results[name] = EVALUATORS[name](run, state, options, workdir)
  return results
