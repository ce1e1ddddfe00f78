r"""AV-MNIST: the fusion types on equal encoder trunks (issue 27). Every fusion reads the same
LeNet stages: all of them (`trunk=full`: the attention fusions' tokens come from the token
stage and the pooled final map joins them as one more token) or those up to the token stage
(`trunk=to_token_stage`: the pooled fusions pool the token stage's map). The fusion sweep
before this one gave the attention fusions the cut trunks and the pooled ones the full trunks.

  python scripts/ablate.py --config=experiments/avmnist.py:evals=robustness \
      --sweep=experiments/sweeps/equal_trunks.py --seeds=3 --root=runs/equal_trunks

Table and discussion: docs/results.md, "Fusion types on equal trunks" (the records in
docs/runs/equal_trunks).
"""
from crossmodal.ablate import Variant

FUSIONS = ('concat', 'late', 'crossattn', 'joint', 'bottleneck')
TRUNKS = {'full': 'full', 'cut': 'to_token_stage'}


def get_sweep():
  return [Variant(f'{fusion}_{short}', f'fusion={fusion},trunk={trunk}')
          for short, trunk in TRUNKS.items() for fusion in FUSIONS]
