r"""AV-MNIST: the cross-modal attention block without one modality (issue 27). With the image
missing, crossattn falls to chance (docs/results.md, robustness) where concat keeps half its
accuracy. Each variant changes one thing that lets a stream survive its partner's absence:
an identity path around the cross layer, a classifier per stream (MBT), modality dropout in
training; all are scored by the robustness evaluator.

  python scripts/ablate.py --config=experiments/avmnist.py:fusion=crossattn,evals=robustness \
      --sweep=experiments/sweeps/missing_modality.py --seeds=3 --root=runs/missing_modality

The diagnosis of the default's collapse (scripts/missing_modality_probe.py on the `crossattn`
run) and the table: docs/results.md, "When a modality is missing"; records in
docs/runs/missing_modality.
"""
from crossmodal.ablate import Variant


def get_sweep():
  return [
      Variant('crossattn'),
      Variant('residual_cross_layer', overrides={'model.fusion.combine': 'concat_proj_residual'}),
      Variant('per_stream_heads', overrides={'model.fusion.heads': 'per_stream'}),
      Variant('residual_and_per_stream', overrides={
          'model.fusion.combine': 'concat_proj_residual', 'model.fusion.heads': 'per_stream'}),
      Variant('modality_dropout_0.3', overrides={'train.modality_dropout': 0.3}),
  ]
