r"""AV-MNIST cross-modal retrieval: the audio and image LeNets aligned by contrastive learning
alone (no classifier is trained), then evaluated by retrieval over the whole test split.

  python -m crossmodal.main --config=experiments/avmnist_retrieval.py --workdir=runs/retrieval

Presets (after ':', comma-separated): loss=infonce (CLIP-style symmetric InfoNCE with a
learned temperature) | triplet (margin 0.2 on cosine similarity) | sigmoid (SigLIP: a
learned temperature and bias, objectives.sigmoid_contrastive); labels=false (positives are
the paired examples only: no labels used) | true (every same-class pair is a positive);
variant, snr, subset, steps, probes as in avmnist.py.

AV-MNIST pairs an image and a recording only by their digit, so an instance-level hit is
luck (about 1 in 1,000 same-digit candidates); recall by class is the measure, against a
chance level of 10%.

Expected result (seed 0, 2000 steps, about 8 min on a 2-core CPU; docs/results.md), recall@1
by class over the 10,000 test examples, chance 10%:
  labels=false  audio->image 52.19%  image->audio 66.04%  (median class rank 1 both ways)
  labels=true   audio->image 56.74%  image->audio 68.23%  (median class rank 1 both ways)
  loss=triplet  audio->image 52.74%  image->audio 65.12%  (median class rank 1 both ways)
Instance recall@1 stays near its chance level of 0.01% (measured 0.03-0.09%): AV-MNIST pairs
share only the digit.
"""
import os

import ml_collections

from crossmodal import config_utils
from crossmodal import evaluators
from crossmodal import objectives

_AVMNIST = config_utils.load_module(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                 'avmnist.py'), '_avmnist_base_config')


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = config_utils.parse_arg(arg, loss='infonce', labels=False, variant=_AVMNIST.VARIANT,
                             snr=_AVMNIST.SNR_DB, subset=0, steps=2000,
                             probes=False)
  if a.loss not in objectives.CONTRASTIVE_LOSSES:
    raise config_utils.ConfigError(f'avmnist_retrieval.py: loss={a.loss!r}; valid choices: '
                                   f'{objectives.CONTRASTIVE_LOSSES}')
  config = _AVMNIST.get_config(f'variant={a.variant},snr={a.snr},subset={a.subset},'
                               f'steps={a.steps},probes={a.probes}')
  config.objectives = objectives.objectives_config(classification=0.0, contrastive=1.0)
  config.objectives.contrastive.update(loss=a.loss, same_class_positives=a.labels)
  # The validation contrastive loss picks the checkpoint.
  config.train.best_metric = 'validation/loss'
  config.evaluators.retrieval = evaluators.evaluator_config('retrieval')
  return config
