r"""AV-MNIST transcription (issue 24): the spoken digit's English word from the noisy audio
alone, and from the audio with the image of the same digit; how much the image corrects,
and what the two-source decoder does when the image is missing.

  python scripts/ablate.py --config=experiments/avmnist_transcribe.py \
      --sweep=experiments/sweeps/transcribe.py --seeds=3 --root=runs/transcribe

Table and reading: docs/results.md, "Generation"; records in docs/runs/transcribe.
"""
from crossmodal.ablate import Variant


def get_sweep():
  return [
      Variant('audio', arg='sources=audio'),
      Variant('audio+image', arg='sources=audio+image'),
      # each source hidden from the decoder with probability 0.3 (never both): what the
      # audio-only score of a two-source decoder owes to never having lost the image
      Variant('audio+image_modality_dropout_0.3', arg='sources=audio+image',
              overrides={'train.modality_dropout': 0.3}),
  ]
