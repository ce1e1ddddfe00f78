r"""Emoji captioning: write an emoji's name from its picture, with a text decoder that
cross-attends to the image encoder's tokens (crossmodal/models/text_decoder.py, the
`generation` objective).

  python -m crossmodal.main --config=experiments/emoji_caption.py --workdir=runs/emoji_caption

Presets (after ':', comma-separated):
  split=twitter_to_google | google_to_twitter   cross-style: every name is seen in training,
                        drawn in the other style; the test asks whether the image side
                        transfers to a new drawing (the default, twitter_to_google)
        held_out_twitter | held_out_google      held-out concepts: the test names are new
                        (1 of 378 occurs in training on held_out_twitter), 68% of their words
                        occur in training names and 37% of the names have every word seen
                        (scripts/caption_overlap.py), so exact matches are rare and token F1
                        and the character error rate say how close the words come
  image_size=32|64|16   (default 32)
  steps=<n>             training steps (default 1000 at batch 64: 48 epochs of the 1340
                        held-out training entries; the decoder memorises the training names
                        long before: train loss 0.01 by step 1900 while the validation loss
                        rose from step 500, so validation every 250 steps picks the checkpoint)
  beam=<k>              beam width of the final test evaluation (default 4; 1 = greedy)
The image encoder is experiments/emoji.py's small ResNet (32x32 -> 8x8 map: 64 tokens). The
validation split is decoded greedily every 250 steps; the best checkpoint has the lowest
validation character error rate; `test` decodes the test split with beam search.

Expected results (test scores at the best validation checkpoint, seeds 0-2, 6-9 min per run
on a 2-core CPU; docs/results.md, "Generation"): captions do not work yet. twitter_to_google:
exact match 0.02 ± 0.04%, character error rate 85.6 ± 1.7%; held_out_twitter: exact match 0%,
CER 82.7 ± 1.7%, token F1 9.7 ± 0.6% (words a subcategory shares, such as "flag").
"""
import os

import ml_collections

from crossmodal import config_utils
from crossmodal import evaluators as evaluators_lib
from crossmodal import objectives

_EMOJI = config_utils.load_module(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                               'emoji.py'), '_emoji_caption_base')


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = config_utils.parse_arg(arg, split='twitter_to_google', image_size=32, steps=1000, beam=4)
  if a.beam < 1:
    raise config_utils.ConfigError(f'emoji_caption.py: beam={a.beam} must be >= 1')
  config = _EMOJI.get_config(f'modalities=image,split={a.split},image_size={a.image_size},'
                             f'steps={a.steps},text=name')
  config.objectives = objectives.objectives_config(classification=0.0, generation=1.0)
  config.objectives.generation.update(sources=('image',),
                                      max_len=_EMOJI.TEXT_LENGTHS['name'])
  config.train.checkpoint_every = 250
  config.evaluators = ml_collections.ConfigDict({
      'validation': evaluators_lib.evaluator_config('generation', split='validation',
                                                    every=250, beam_size=1),
      'test': evaluators_lib.evaluator_config('generation', beam_size=a.beam),
  })
  config.train.best_metric = 'validation/cer'
  return config
