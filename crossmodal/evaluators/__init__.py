"""Evaluators, one small module each, in big_vision's shape; `REGISTRY` maps a name to a class.

  classification  accuracy, macro-F1, per-class numbers and the objectives' losses on a split
                  (the in-loop validation/test numbers and the final ones)
  retrieval       recall@k and median rank between two modalities' pooled vectors
  zero_shot       images classified by the text vectors of the class names (CLIP)
  robustness      accuracy with a modality missing and under growing noise per modality
  reconstruction  images decoded from another modality: a picture and a class-mean score
  attention       pictures of an attention fusion's attention maps
  linear_probe    accuracy of a ridge or logistic classifier fitted on the train split's frozen
                  embeddings (a modality's pooled vector or the fused one)
  generation      text decoded from another modality (greedy or beam search): exact match,
                  character error rate, token F1, BLEU, a table and a picture of examples
  streams         where a missing modality breaks crossattn: its own stream's block vs its
                  keys in the other streams, and ridge probes of each stream without it

`config.evaluators.<name>` gives one evaluator's options; `type` says which class (default:
the name itself, so `config.evaluators.retrieval` is a retrieval evaluator) and `every` how
often it runs during training (every N steps and at the last; 0 = only on the checkpoint
evaluated after training, or by --mode=eval). Every evaluator writes one record per run to
metrics.jsonl / TensorBoard, split `<name>` in the loop and `eval_<name>` at the end, and
`config.train.best_metric` may name any scalar an in-loop evaluator declares, as
`<name>/<metric>` (e.g. `validation/accuracy`). A new evaluator is one module with an
`Evaluator` class (common.Evaluator) plus one line in REGISTRY.
"""
from __future__ import annotations

from typing import Any, Mapping

import ml_collections

from crossmodal import schema
from crossmodal.evaluators import attention
from crossmodal.evaluators import classification
from crossmodal.evaluators import common
from crossmodal.evaluators import generation
from crossmodal.evaluators import linear_probe
from crossmodal.evaluators import reconstruction
from crossmodal.evaluators import retrieval
from crossmodal.evaluators import robustness
from crossmodal.evaluators import streams
from crossmodal.evaluators import zero_shot
from crossmodal.evaluators.common import Engine, Predict, passes  # what the loop uses

REGISTRY: dict[str, type[common.Evaluator]] = {
    'classification': classification.Evaluator,
    'retrieval': retrieval.Evaluator,
    'zero_shot': zero_shot.Evaluator,
    'robustness': robustness.Evaluator,
    'reconstruction': reconstruction.Evaluator,
    'attention': attention.Evaluator,
    'linear_probe': linear_probe.Evaluator,
    'streams': streams.Evaluator,
    'generation': generation.Evaluator,
}


def evaluator_config(kind: str, **overrides: Any) -> ml_collections.ConfigDict:
  """Every option of evaluator type `kind` at its default, with `overrides`."""
  return ml_collections.ConfigDict(common.evaluator_config(kind, REGISTRY, **overrides))


def classification_config(every: int, splits: tuple[str, ...] = ('validation', 'test')
                          ) -> ml_collections.ConfigDict:
  """config.evaluators with one classification evaluator per split, named after it, run
  every `every` steps: what most experiments start from."""
  return ml_collections.ConfigDict({
      split: common.evaluator_config('classification', REGISTRY, split=split, every=every)
      for split in splits})


def build_all(evaluators: Mapping[str, Any] | None, model: Any, objectives: Any = None,
              data: Any = None) -> list[tuple[str, common.Evaluator, int]]:
  """[(name, evaluator, every)] of `config.evaluators`, in the order they run and write.

  Classification evaluators come first, in split order (validation, test, train), then the
  others by name: the cheap headline numbers are on the console before the slow ones.
  ConfigError names a bad evaluator or option, before any data is read.
  """
  built = [(name, *common.build(name, options, REGISTRY, model, objectives, data))
           for name, options in (evaluators or {}).items()]

  def order(item):
    name, evaluator, _ = item
    first = isinstance(evaluator, classification.Evaluator)
    return (not first, common.SPLITS.index(evaluator.split) if first else 0, name)
  return sorted(built, key=order)


def best_metric(name: str, built: list[tuple[str, common.Evaluator, int]]) -> tuple[str, str]:
  """(`<evaluator>/<metric>`, 'max' or 'min') for `config.train.best_metric`; ConfigError
  unless an in-loop evaluator on a split other than test declares that scalar."""
  where = f'config.train.best_metric={name!r}'
  declared = {f'{n}/{m}': (mode, every, e.split) for n, e, every in built
              for m, mode in e.metrics().items()}
  if name not in declared:
    in_loop = sorted(k for k, (_, every, split) in declared.items()
                     if every and split != 'test')
    raise schema.ConfigError(f'{where}: no evaluator of config.evaluators declares it; the '
                             f'in-loop evaluators declare {in_loop}')
  mode, every, split = declared[name]
  evaluator = name.split('/', 1)[0]
  if not every:
    raise schema.ConfigError(f'{where}: config.evaluators.{evaluator} runs only after '
                             f'training (every=0); set config.evaluators.{evaluator}.every to '
                             'a number of steps so checkpoints can be ranked by it')
  if split == 'test':
    raise schema.ConfigError(f'{where}: config.evaluators.{evaluator} reads the test split, '
                             'and choosing a checkpoint on test data makes its test numbers '
                             'optimistic; rank by an evaluator on the validation split')
  return name, mode


def headlines() -> dict[str, tuple[str, ...]]:
  """{evaluator type: regexes of the metrics that results tables show}."""
  return {kind: cls.HEADLINES for kind, cls in REGISTRY.items()}
