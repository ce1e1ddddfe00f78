r"""Emoji text-image retrieval and zero-shot classification on both kinds of split: held-out
concepts (Twitter images) and cross-style (train on Twitter, test on Google's drawings).

  python scripts/ablate.py --config=experiments/emoji_retrieval.py \
      --sweep=experiments/sweeps/emoji_retrieval.py --seeds=3 --root=runs/emoji_retrieval

Results: docs/results.md.
"""
from crossmodal.ablate import Variant


def get_sweep():
  return [Variant('held_out_concepts', 'split=held_out_twitter'),
          Variant('cross_style', 'split=twitter_to_google')]
