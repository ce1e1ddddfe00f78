r"""Emoji captioning (issue 24): an emoji's name from its picture, on a new drawing style of
known names (twitter_to_google) and on new names of known subcategories (held_out_twitter).

  python scripts/ablate.py --config=experiments/emoji_caption.py \
      --sweep=experiments/sweeps/emoji_caption.py --seeds=3 --root=runs/emoji_caption

Table and reading: docs/results.md, "Generation"; records in docs/runs/emoji_caption.
"""
from crossmodal.ablate import Variant


def get_sweep():
  return [
      Variant('cross_style', arg='split=twitter_to_google'),
      Variant('held_out_concepts', arg='split=held_out_twitter'),
  ]
