r"""AV-MNIST tasks that need the two modalities bound part to part (crossmodal/data/avmnist_tasks.py):
which cell of a grid of digits shows the spoken one (grid2, grid3), whether a written and a
spoken digit agree (match), which position of a written and a spoken sequence disagrees (seq2,
seq3). Neither modality alone is above chance (25%, 11%, 50%, 33%, 25%).

  python -m crossmodal.main --config=experiments/avmnist_grid.py:fusion=crossattn,evals=attention \
      --workdir=runs/grid2_crossattn

Presets: those of experiments/avmnist.py (fusion, modalities, encoders, trunk, variant, snr,
subset, steps, evals, probes, encoders_from, locked), with task=grid2 (default) | grid3 | match
| seq2 | seq3, and these defaults: clean images and audio (variant=clean, snr=clean), since the
question is whether a fusion can bind, not whether it can read a degraded digit
(variant=pca5,snr=-11 gives the AV-MNIST recipe's inputs); and every fusion on the full LeNet
trunks (trunk=full: attention fusions read the token stage's map plus the final map as one more
token), so that fusions differ in the fusion only (docs/fusion.md, "Encoder
trunks"). evals=attention with crossattn or joint on a grid task adds `cell_mass`, the share of
the audio tokens' attention on the image tokens of the labelled cell, after training
(attention) and every 500 steps on validation (attention_val).

Expected results (seed 0, 2000 steps; docs/results.md, "Where fusion must bind", in progress):
task=grid2 concat 25.11%, crossattn 25.00% (chance 25%: neither binds, cell_mass at chance);
task=match,fusion=crossattn 50.00% (chance), and 95.48% when both encoders start from a
crossattn run on AV-MNIST digits (encoders_from=<it>,trunk=to_token_stage), where grid2 stays
at 25.00%.
"""
import os

import ml_collections

from crossmodal import config_utils

_AVMNIST = config_utils.load_module(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                 'avmnist.py'), '_avmnist_base_config')
DEFAULTS = {'task': 'grid2', 'variant': 'clean', 'snr': 'clean', 'trunk': 'full'}
# What tests/test_experiments.py trains for a few steps: the attention score, in the loop and after.
TEST_ARG = 'fusion=crossattn,evals=attention'


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  given = {item.split('=', 1)[0].strip() for item in (arg or '').split(',') if item.strip()}
  defaults = ','.join(f'{k}={v}' for k, v in DEFAULTS.items() if k not in given)
  config = _AVMNIST.get_config(','.join(filter(None, (defaults, arg))))
  if _AVMNIST.avmnist_data.resolve_config(config.data.builder_config).task == 'digit':
    raise config_utils.ConfigError(
        "avmnist_grid.py: task=digit is AV-MNIST itself; use experiments/avmnist.py")
  return config
