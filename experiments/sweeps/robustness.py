r"""AV-MNIST: does modality dropout during training make fusion robust to a missing or noisy
modality? Late and concat fusion trained with `train.modality_dropout=0.3` (each modality of a
training example hidden with probability 0.3), the robustness evaluator run after training.

  python scripts/ablate.py --config=experiments/avmnist.py:evals=robustness \
      --sweep=experiments/sweeps/robustness.py --seeds=1 --root=runs/robustness

Their counterparts without dropout are the fusion sweep's `late` and `concat` runs; the table
(docs/results.md) comes from scripts/robustness_report.py over both roots.
"""
from crossmodal.ablate import Variant


def get_sweep():
  return [Variant(f'{fusion}_modality_dropout_0.3', f'fusion={fusion}',
                  {'train.modality_dropout': 0.3}) for fusion in ('late', 'concat')]
