r"""AV-MNIST transcription: write the spoken digit as an English word ("seven") from the audio,
or from the audio and the image of the same digit, with a text decoder that cross-attends to
the encoders' tokens (crossmodal/models/text_decoder.py, the `generation` objective).

  python -m crossmodal.main --config=experiments/avmnist_transcribe.py \
      --workdir=runs/transcribe_audio_image

Presets: those of experiments/avmnist.py that shape the data and encoders (variant, snr,
subset, steps, image, audio, trunk), plus
  sources=audio+image | audio   what the decoder reads (the model's modalities); audio alone
                       is the baseline, and with both the image may correct what the noisy
                       audio (-11 dB, the AV-MNIST recipe) gets wrong
  beam=<k>             beam width of the final test evaluation (default 4; 1 = greedy)
The decoder reads LeNet feature-map tokens (image 3x3, audio 6x4) plus each trunk's pooled
vector as one more token (trunk=full). Validation is decoded greedily every 500 steps and the
best checkpoint is the one with the highest validation exact match; `test` decodes the test
split with beam search, and with both sources `test_audio_only` hides the image.

Expected results (test exact match at the best validation checkpoint, seeds 0-2, 2000 steps,
6-9 min per run on a 2-core CPU; docs/results.md, "Generation"): sources=audio 65.74 ± 0.91%;
sources=audio+image 90.58 ± 0.27%, and 48.57 ± 0.69% with the image hidden (test_audio_only);
with --config.train.modality_dropout=0.3 91.04 ± 0.17% and 60.39 ± 0.42%.
"""
import os

import ml_collections

from crossmodal import config_utils
from crossmodal import evaluators as evaluators_lib
from crossmodal import objectives

_AVMNIST = config_utils.load_module(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                                 'avmnist.py'), '_avmnist_transcribe_base')
DIGIT_WORDS = ('zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine')
SOURCES = (('audio', 'image'), ('audio',))
# Presets passed through to experiments/avmnist.py (the data and the encoders).
PASSED = ('variant', 'snr', 'subset', 'steps', 'image', 'audio', 'trunk')


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = config_utils.parse_arg(arg, sources=('audio', 'image'), beam=4, variant=_AVMNIST.VARIANT,
                             snr=_AVMNIST.SNR_DB, subset=0, steps=2000, image='lenet',
                             audio='lenet', trunk='full')
  if tuple(a.sources) not in SOURCES:
    raise config_utils.ConfigError(f'avmnist_transcribe.py: sources={"+".join(a.sources)!r}; '
                                   f'valid choices: {["+".join(s) for s in SOURCES]}')
  if a.beam < 1:
    raise config_utils.ConfigError(f'avmnist_transcribe.py: beam={a.beam} must be >= 1')
  base = ','.join(f'{k}={getattr(a, k)}' for k in PASSED)
  config = _AVMNIST.get_config(f'{base},modalities={"+".join(a.sources)},fusion=concat')
  for m in a.sources:  # the decoder attends over feature-map positions, not one token
    if getattr(a, m) == 'lenet':
      config.model.encoders[m].token_stage = _AVMNIST.LENET_TOKEN_STAGES[m]

  config.objectives = objectives.objectives_config(classification=0.0, generation=1.0)
  config.objectives.generation.update(sources=tuple(a.sources), class_texts=DIGIT_WORDS,
                                      max_len=8)
  config.evaluators = ml_collections.ConfigDict({
      'validation': evaluators_lib.evaluator_config('generation', split='validation',
                                                    every=500, beam_size=1),
      'test': evaluators_lib.evaluator_config('generation', beam_size=a.beam),
  })
  if 'image' in a.sources:
    config.evaluators.test_audio_only = evaluators_lib.evaluator_config(
        'generation', beam_size=a.beam, hide=('image',))
  config.train.best_metric = 'validation/exact_match'
  return config
