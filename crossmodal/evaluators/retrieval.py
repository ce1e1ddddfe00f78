"""Cross-modal retrieval over a whole split, by cosine similarity of two modalities' pooled
vectors: recall@k and median rank in both directions, a hit counted by instance (the paired
example) and by class (any example of the query's class); for text and image, optionally a
PNG of the top-5 images for a few text queries.

Ranking goes in blocks of queries, so memory stays [block, N] however large the split.
"""
from __future__ import annotations

import functools
from typing import Any, Mapping, Sequence

import numpy as np

from crossmodal.evaluators import common


class Evaluator(common.Evaluator):
  """Options: split, pair (two modalities), ks, block, picture_queries (text->image PNG)."""
  HEADLINES = (r'^[a-z]+_to_[a-z]+/instance/recall@(1|10)$',
               r'^[a-z]+_to_[a-z]+/class/(recall@1|median_rank)$', r'^chance/class_recall@1$')

  def __init__(self, model, objectives=None, data=None, *, split: str = 'test',
               pair: tuple[str, ...] = ('audio', 'image'), ks: tuple[int, ...] = (1, 5, 10),
               block: int = 1024, picture_queries: int = 0):
    super().__init__(model, objectives, data, split=split)
    self.pair, self.ks = tuple(pair), tuple(int(k) for k in ks)
    self.block, self.picture_queries = block, picture_queries
    if len(set(self.pair)) != 2 or not set(self.pair) <= set(self.modalities):
      self.fail(f'{self.pair} needs two different modalities of {list(self.modalities)}',
                'pair')
    if block < 1 or not self.ks or any(k < 1 for k in self.ks):
      self.fail(f'block={block} and ks={self.ks} must be positive')
    if picture_queries < 0 or (picture_queries and set(self.pair) != {'image', 'text'}):
      self.fail(f'{picture_queries}: must be >= 0, and pictures need pair=(text, image)',
                'picture_queries')
    common.embedding_fusion_check(self, self.pair)
    # One class (or unlabelled data, given one): a class hit is certain, so none is counted.
    self.by_class = model.num_classes > 1

  def metrics(self) -> dict[str, str]:
    first, second = self.pair
    out = {}
    for a, b in ((first, second), (second, first)):
      for by in ('instance', 'class') if self.by_class else ('instance',):
        out.update({f'{a}_to_{b}/{by}/recall@{k}': common.MAX for k in self.ks})
        out[f'{a}_to_{b}/{by}/median_rank'] = common.MIN
    return out

  def run(self, predict, batches, workdir: str) -> dict[str, Any]:
    first, second = self.pair
    picture = self.picture_queries > 0
    got = predict.over(_select(self.pair), batches(),
                       keep=('image', 'text') if picture else (),
                       transform=functools.partial(_rows_with_both, self.pair))
    labels = got['label']
    summary: dict[str, Any] = {'num_examples': int(len(labels))}
    if self.by_class:
      summary['chance/class_recall@1'] = chance_class_recall(labels)
    for a, b in ((first, second), (second, first)):
      instance, by_class = ranks(got[f'vector/{a}'], got[f'vector/{b}'], labels, labels,
                                 self.block)
      summary.update({f'{a}_to_{b}/{k}': v for k, v in
                      summarize(instance, by_class, self.ks).items()
                      if self.by_class or k.startswith('instance/')})
    if picture:
      summary['picture'] = _top_images_picture(got, self.picture_queries, workdir)
    return summary


def _rows_with_both(pair: tuple[str, str], batch: dict, _) -> dict:
  """Rows lacking either modality (a manifest's `present`) are not ranked, nor ranked against."""
  from crossmodal.models import encoders  # pylint: disable=import-outside-toplevel
  has = encoders.presence(batch, pair)
  return batch if has is None else {**batch, 'mask': batch['mask'] & has.all(1)}


@functools.lru_cache(maxsize=None)
def _select(pair: tuple[str, str]):
  """The pooled vectors of `pair`; one function per pair, so the forward pass compiled for it
  is reused by every later evaluation of the run."""
  def select(out):
    absent = [m for m in pair if m not in out['embeddings']]
    if absent:
      raise ValueError(f'retrieval: the model computes no pooled vector for {absent}')
    return {f'vector/{m}': out['embeddings'][m] for m in pair}
  return select


def ranks(queries: np.ndarray, keys: np.ndarray, query_labels: np.ndarray,
          key_labels: np.ndarray, block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
  """1-based rank of each query's paired key (query i <-> key i) and of its best-ranked
  same-class key, by cosine similarity; ties count against the query (a key scoring the same
  as the hit, and not itself a hit, is ranked before it)."""
  q, k = common.unit(queries), common.unit(keys)
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


def summarize(instance: np.ndarray, by_class: np.ndarray,
              ks: Sequence[int]) -> dict[str, float]:
  out = {}
  for name, r in (('instance', instance), ('class', by_class)):
    for k in ks:
      out[f'{name}/recall@{k}'] = float(np.mean(r <= k))
    out[f'{name}/median_rank'] = float(np.median(r))
  return out


def chance_class_recall(labels: np.ndarray) -> float:
  """Class recall@1 of a random ranking: a random key shares a random query's class with
  probability sum_c p_c^2 (0.1 for 10 balanced classes)."""
  return float(np.sum((np.bincount(labels) / len(labels)) ** 2))


def _top_images_picture(got: Mapping[str, np.ndarray], num_queries: int, workdir: str,
                        k: int = 5) -> str:
  """PNG: for text queries spread over the split, the query's own image, then the k images
  ranked first (a green frame marks the query's own image among them)."""
  from crossmodal.models import text as text_lib  # pylint: disable=import-outside-toplevel
  queries = np.linspace(0, len(got['label']) - 1, num_queries).round().astype(int)
  sim = common.unit(got['vector/text'][queries]) @ common.unit(got['vector/image']).T
  plt = common.pyplot()
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
  return common.save_figure(fig, workdir, 'retrieval_text_to_image.png')
