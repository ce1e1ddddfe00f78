r"""Emoji text-image retrieval and zero-shot classification: the image CNN and the byte-level
text transformer aligned by contrastive learning alone (symmetric InfoNCE, learned temperature,
in-batch negatives over the global batch; no classifier is trained).

  python -m crossmodal.main --config=experiments/emoji_retrieval.py --workdir=runs/emoji_retrieval

Presets (after ':', comma-separated): split, text, image_size, steps as in emoji.py;
label=category|subcategory (what a hit "by class" and zero-shot classification mean);
loss=infonce|sigmoid (SigLIP: learned temperature and bias); image_from=<workdir> starts the
image encoder from that run's best checkpoint (e.g. an image-only classifier trained with
experiments/emoji.py:modalities=image) and locked=true then freezes it: LiT, locked-image
tuning (crossmodal/transfer.py). E.g.
  python -m crossmodal.main --config=experiments/emoji.py:modalities=image --workdir=runs/lit/tower
  python -m crossmodal.main --config=experiments/emoji_retrieval.py:image_from=runs/lit/tower,locked=true \
      --workdir=runs/lit/locked

Evaluators: retrieval over the whole test split in both directions (recall@1/5/10 and median
rank, by instance: the entry's own image or name, and by class), with a picture of the top-5
images for 8 text queries (eval/retrieval_text_to_image.png); zero_shot: each test image gets
the class whose name ("smileys & emotion", ...) embeds closest.

Expected results (seeds 0-2, mean; docs/results.md has the full table and the command):
  held-out concepts (378 test entries): text->image recall@1 by instance 2.0% (chance 0.26%),
  by category 37.3% (chance 12.8%); zero-shot accuracy 12.8% (uniform 10%, majority 20.1%).
  cross-style (1533 Google drawings): text->image recall@1 by instance 0.39% (chance 0.065%),
  by category 26.5%. These are at the best validation loss, step 100 of 400; the last
  checkpoint ranks better (held-out instance recall@1 4.1%, --mode=eval --checkpoint=latest).
  About 2.5 min per run, two runs at a time on this 2-core CPU.
"""
import os

import ml_collections

from crossmodal import config_utils
from crossmodal import evaluators
from crossmodal import objectives
from crossmodal import transfer

_EMOJI = config_utils.load_module(os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                               'emoji.py'), '_emoji_base_config')


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
  a = config_utils.parse_arg(arg, split='held_out_twitter', text='name', label='category',
                             image_size=32, steps=400, loss='infonce', image_from='',
                             locked=False)
  if a.loss not in ('infonce', 'sigmoid'):
    raise config_utils.ConfigError(f"emoji_retrieval.py: loss={a.loss!r}; valid choices: "
                                   "('infonce', 'sigmoid')")
  if a.locked and not a.image_from:
    raise config_utils.ConfigError('emoji_retrieval.py: locked=true locks the image encoder '
                                   'taken from image_from=<workdir>; give that run')
  config = _EMOJI.get_config(f'split={a.split},text={a.text},label={a.label},'
                             f'image_size={a.image_size},steps={a.steps}')
  config.objectives = objectives.objectives_config(classification=0.0, contrastive=1.0)
  config.objectives.contrastive.update(pair=('text', 'image'), loss=a.loss)
  if a.image_from:
    config.init_from = ml_collections.ConfigDict(
        {'image_tower': transfer.init_from_config(a.image_from, 'best', source='image_encoder')})
  if a.locked:
    config.train.frozen = ('image_encoder/.*',)
  # The validation contrastive loss picks the checkpoint.
  config.train.best_metric = 'validation/loss'
  config.evaluators.retrieval = evaluators.evaluator_config('retrieval', pair=('text', 'image'),
                                                            picture_queries=8)
  config.evaluators.zero_shot = evaluators.evaluator_config('zero_shot')
  return config
