r"""Classical baselines on AV-MNIST and emoji: one Markdown table beside the deep models.

  CROSSMODAL_MANUAL_DIR=../shared/data python scripts/baselines.py --dataset=both \
      --out=runs/baselines/baselines.md

Reads the datasets exactly as training does (`datasets.get_source(config.data, split)` with the
config.data of experiments/avmnist.py and experiments/emoji.py, so AV-MNIST is the default
pca5_snr-11 recipe and emoji is held_out_twitter by category at 32x32) and fits everything on
the train split (--max_train=N: a seeded random subset of N; 0 = all), reporting on test.

Features, one block per modality:
  image  PCA of the pixels in [0, 1] (--image_pca components)
  text   TF-IDF of the decoded emoji names (word unigrams and bigrams), then truncated SVD
         (--text_svd components)
  audio  mean and standard deviation over frames of the MFCC of each clip (the whole 1 s
         clip the model sees), computed by the model's own JAX featuriser
         (crossmodal/data/features.py) with the audio encoder's feature options, i.e.
         librosa.feature.mfcc with the same parameters
Rows of the table:
  classification  logistic regression and a linear SVM (scikit-learn, C=1, no tuning) on each
                  block alone and on the blocks concatenated, every feature standardised on
                  train: test accuracy and macro-F1; 'majority class' is the most frequent
                  train label
  retrieval       cosine similarity between the two modalities of a test pair, each way, with
                  the ranks of crossmodal/evaluators/retrieval.py: recall@1 by instance (the
                  paired example) and by class (any example of the query's class). The spaces
                  differ, so one of two maps is fitted on the train pairs first: CCA (both
                  sides projected onto the first --cca canonical directions, each coordinate
                  of unit variance) or a linear map (ridge regression taking the query's
                  standardised features into the keys' standardised space, one per
                  direction); 'chance' is 1/N by instance and sum_c p_c^2 by class.
"""
from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

import numpy as np
from sklearn import decomposition
from sklearn import feature_extraction
from sklearn import linear_model
from sklearn import metrics as sk_metrics
from sklearn import pipeline
from sklearn import preprocessing
from sklearn import svm

from crossmodal import config_utils
from crossmodal.data import datasets
from crossmodal.data import features as features_lib
from crossmodal.evaluators import retrieval
from crossmodal.models import text as text_lib

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIGS = {'avmnist': 'experiments/avmnist.py', 'emoji': 'experiments/emoji.py'}
MODALITIES = {'avmnist': ('image', 'audio'), 'emoji': ('image', 'text')}
COLUMNS = ('dataset', 'task', 'input', 'method', 'accuracy (%)', 'macro-F1 (%)',
           'instance R@1 (%)', 'class R@1 (%)')


# ----------------------------------------------------------------------------- data

def load_split(data_config, split: str, modalities: Sequence[str], limit: int = 0,
               seed: int = 0) -> dict[str, np.ndarray]:
  """The split's examples as stacked arrays {modality..., 'label'}; `limit` > 0 keeps a
  seeded random subset of that many."""
  source = datasets.get_source(data_config, split)
  index = np.arange(len(source))
  if 0 < limit < len(source):
    index = np.sort(np.random.default_rng(seed).choice(len(source), limit, replace=False))
  examples = [source[int(i)] for i in index]
  out = {m: np.stack([np.asarray(ex[m]) for ex in examples]) for m in modalities}
  out['label'] = np.array([int(ex['label']) for ex in examples], np.int64)
  return out


# ----------------------------------------------------------------------------- features

def fit_image_features(train_images: np.ndarray, num_components: int, seed: int = 0):
  """PCA of pixels in [0, 1], fitted on train: returns images [N, ...] uint8 -> [N, k]."""
  def flat(images):
    return np.asarray(images, np.float32).reshape(len(images), -1) / 255.0
  k = min(num_components, *flat(train_images[:1]).shape[1:], len(train_images))
  pca = decomposition.PCA(k, random_state=seed).fit(flat(train_images))
  return lambda images: pca.transform(flat(images))


def fit_text_features(train_texts: Sequence[str], num_components: int, seed: int = 0):
  """TF-IDF (word uni- and bigrams) then truncated SVD, fitted on train: texts -> [N, k]."""
  tfidf = feature_extraction.text.TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
  counts = tfidf.fit_transform(train_texts)
  k = min(num_components, counts.shape[1] - 1, len(train_texts) - 1)
  svd = decomposition.TruncatedSVD(k, random_state=seed).fit(counts)
  return lambda texts: svd.transform(tfidf.transform(texts))


def decode_texts(ids: np.ndarray) -> list[str]:
  return list(text_lib.decode(ids))


def to_float_audio(waveforms: np.ndarray) -> np.ndarray:
  """int16 PCM -> float32 in [-1, 1], as the input pipeline does; float audio is kept."""
  waveforms = np.asarray(waveforms)
  if np.issubdtype(waveforms.dtype, np.integer):
    return waveforms.astype(np.float32) / (np.iinfo(waveforms.dtype).max + 1.0)
  return waveforms.astype(np.float32)


def mfcc_stats(waveforms: np.ndarray, feature_config=None, batch: int = 512) -> np.ndarray:
  """Mean and standard deviation over frames of each clip's MFCC: [N, T] -> [N, 2 n_mfcc]
  (the JAX featuriser of crossmodal/data/features.py, in batches)."""
  cfg = feature_config if feature_config is not None else features_lib.features_config()
  out = []
  for start in range(0, len(waveforms), batch):
    coeffs = np.asarray(features_lib.mfcc(to_float_audio(waveforms[start:start + batch]), cfg),
                        np.float64)  # [b, frames, n_mfcc]
    out.append(np.concatenate([coeffs.mean(1), coeffs.std(1)], axis=1))
  return np.concatenate(out)


def featurize(dataset: str, config, train: dict[str, np.ndarray], test: dict[str, np.ndarray],
              args) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  """Per-modality feature blocks of train and test, every transform fitted on train."""
  feats_train, feats_test = {}, {}
  for m in MODALITIES[dataset]:
    if m == 'image':
      fn = fit_image_features(train['image'], args.image_pca, args.seed)
    elif m == 'text':
      fit = fit_text_features(decode_texts(train['text']), args.text_svd, args.seed)
      fn = lambda ids, fit=fit: fit(decode_texts(ids))
    else:
      fn = lambda w: mfcc_stats(w, config.model.encoders.audio.get('features'))
    feats_train[m], feats_test[m] = fn(train[m]), fn(test[m])
  return feats_train, feats_test


# ----------------------------------------------------------------------------- classification

def classifiers(seed: int = 0) -> dict[str, Any]:
  """Name -> unfitted scikit-learn pipeline (standardise, then the linear classifier)."""
  return {
      'logistic regression': pipeline.make_pipeline(
          preprocessing.StandardScaler(),
          linear_model.LogisticRegression(max_iter=2000, random_state=seed)),
      'linear SVM': pipeline.make_pipeline(
          preprocessing.StandardScaler(),
          svm.LinearSVC(dual=False, max_iter=5000, random_state=seed)),
  }


def classify(model, x_train, y_train, x_test, y_test) -> dict[str, float]:
  """Test accuracy and macro-F1 of `model` fitted on train."""
  predicted = model.fit(x_train, y_train).predict(x_test)
  return {'accuracy': float(sk_metrics.accuracy_score(y_test, predicted)),
          'macro_f1': float(sk_metrics.f1_score(y_test, predicted, average='macro'))}


def majority_class(y_train, y_test) -> dict[str, float]:
  predicted = np.full(len(y_test), np.bincount(y_train).argmax())
  return {'accuracy': float(sk_metrics.accuracy_score(y_test, predicted)),
          'macro_f1': float(sk_metrics.f1_score(y_test, predicted, average='macro'))}


# ----------------------------------------------------------------------------- retrieval

def _standardizer(x: np.ndarray):
  mean, std = x.mean(0), np.maximum(x.std(0), 1e-12)
  return lambda y: (y - mean) / std


def _inverse_sqrt(cov: np.ndarray) -> np.ndarray:
  values, vectors = np.linalg.eigh(cov)
  return vectors @ np.diag(1.0 / np.sqrt(np.maximum(values, 1e-12))) @ vectors.T


def fit_cca(a: np.ndarray, b: np.ndarray, num_components: int, reg: float = 1e-3):
  """Regularised CCA in closed form (whiten each side, SVD of the cross-covariance): returns
  (project_a, project_b, canonical correlations). Projections are whitened, so cosine
  similarity in the shared space weighs every canonical direction alike."""
  sa, sb = _standardizer(a), _standardizer(b)
  za, zb = sa(a), sb(b)
  n = len(a)
  wa = _inverse_sqrt(za.T @ za / n + reg * np.eye(za.shape[1]))
  wb = _inverse_sqrt(zb.T @ zb / n + reg * np.eye(zb.shape[1]))
  u, corr, vt = np.linalg.svd(wa @ (za.T @ zb / n) @ wb)
  k = min(num_components, len(corr))
  pa, pb = wa @ u[:, :k], wb @ vt[:k].T
  return (lambda x: sa(x) @ pa), (lambda y: sb(y) @ pb), corr[:k]


def fit_linear_map(source: np.ndarray, target: np.ndarray, alpha: float = 1.0):
  """Ridge regression from standardised `source` to standardised `target`, fitted on train
  pairs: returns (map_source, standardise_target), both into the target's space."""
  ss, st = _standardizer(source), _standardizer(target)
  ridge = linear_model.Ridge(alpha=alpha).fit(ss(source), st(target))
  return (lambda x: ridge.predict(ss(x))), st


def retrieve(queries: np.ndarray, keys: np.ndarray, labels: np.ndarray) -> dict[str, float]:
  """Recall@1 by instance and by class of query i <-> key i (crossmodal's retrieval ranks)."""
  instance, by_class = retrieval.ranks(queries, keys, labels, labels)
  return retrieval.summarize(instance, by_class, (1,))


def retrieval_results(pair: tuple[str, str], train: dict[str, np.ndarray],
                      test: dict[str, np.ndarray], labels: np.ndarray,
                      num_components: int, alpha: float = 1.0) -> dict[tuple[str, str], dict]:
  """{(method, 'a→b'): recall@1 summary} for CCA and for the linear maps, both directions."""
  a, b = pair
  out = {}
  project_a, project_b, _ = fit_cca(train[a], train[b], num_components)
  qa, qb = project_a(test[a]), project_b(test[b])
  out['CCA', f'{a}→{b}'] = retrieve(qa, qb, labels)
  out['CCA', f'{b}→{a}'] = retrieve(qb, qa, labels)
  for src, dst in ((a, b), (b, a)):
    mapped, target = fit_linear_map(train[src], train[dst], alpha)
    out['linear map (ridge)', f'{src}→{dst}'] = retrieve(mapped(test[src]), target(test[dst]),
                                                         labels)
  return out


# ----------------------------------------------------------------------------- table

def _pct(value: float | None) -> str:
  return '—' if value is None else f'{100 * value:.2f}'


def row(dataset, task, inputs, method, accuracy=None, macro_f1=None, instance=None,
        by_class=None) -> list[str]:
  return [dataset, task, inputs, method, _pct(accuracy), _pct(macro_f1), _pct(instance),
          _pct(by_class)]


def markdown_table(rows: Sequence[Sequence[str]]) -> str:
  lines = ['| ' + ' | '.join(COLUMNS) + ' |', '|' + '---|' * len(COLUMNS)]
  lines += ['| ' + ' | '.join(r) + ' |' for r in rows]
  return '\n'.join(lines) + '\n'


def dataset_rows(dataset: str, args) -> list[list[str]]:
  """Every row of one dataset: classification per block and fused, then retrieval."""
  config = config_utils.load_config_file(os.path.join(REPO, CONFIGS[dataset]))
  modalities = MODALITIES[dataset]
  train = load_split(config.data, 'train', modalities, args.max_train, args.seed)
  test = load_split(config.data, 'test', modalities, args.max_test, args.seed)
  feats_train, feats_test = featurize(dataset, config, train, test, args)
  y_train, y_test = train['label'], test['label']
  name = f'{dataset} ({len(y_train)} train / {len(y_test)} test)'
  rows = [row(name, 'classification', '—', 'majority class', **majority_class(y_train, y_test))]
  inputs = [(m, [m]) for m in modalities] + [(' + '.join(modalities), list(modalities))]
  for label, blocks in inputs:
    x_train = np.concatenate([feats_train[m] for m in blocks], axis=1)
    x_test = np.concatenate([feats_test[m] for m in blocks], axis=1)
    for method, model in classifiers(args.seed).items():
      rows.append(row(name, 'classification', label, method,
                      **classify(model, x_train, y_train, x_test, y_test)))
  found = retrieval_results(modalities, feats_train, feats_test, y_test, args.cca)
  chance = (1.0 / len(y_test), retrieval.chance_class_recall(y_test))
  rows.append(row(name, 'retrieval', 'either way', 'chance', instance=chance[0],
                  by_class=chance[1]))
  for (method, direction), summary in found.items():
    rows.append(row(name, 'retrieval', direction, method, instance=summary['instance/recall@1'],
                    by_class=summary['class/recall@1']))
  return rows


def main(argv: Sequence[str] | None = None) -> int:
  p = argparse.ArgumentParser(description=__doc__.split('\n\n')[0],
                              formatter_class=argparse.RawDescriptionHelpFormatter)
  p.add_argument('--dataset', choices=('avmnist', 'emoji', 'both'), default='both')
  p.add_argument('--max_train', type=int, default=0, help='random train subset (0 = all)')
  p.add_argument('--max_test', type=int, default=0, help='random test subset (0 = all)')
  p.add_argument('--seed', type=int, default=0)
  p.add_argument('--image_pca', type=int, default=64, help='PCA components of the pixels')
  p.add_argument('--text_svd', type=int, default=64, help='SVD components of the TF-IDF')
  p.add_argument('--cca', type=int, default=16, help='canonical directions for retrieval')
  p.add_argument('--out', default='', help='also write the table to this Markdown file')
  args = p.parse_args(argv)
  started = time.time()
  rows = []
  for dataset in (('avmnist', 'emoji') if args.dataset == 'both' else (args.dataset,)):
    rows += dataset_rows(dataset, args)
  table = markdown_table(rows)
  command = 'python scripts/baselines.py ' + ' '.join(argv if argv is not None else sys.argv[1:])
  text = f'`{command.strip()}` ({time.time() - started:.0f} s)\n\n{table}'
  print(text, end='')
  if args.out:
    os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
    with open(args.out, 'w') as f:
      f.write(text)
  return 0


if __name__ == '__main__':
  sys.exit(main())
