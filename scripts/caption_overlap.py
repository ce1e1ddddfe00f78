r"""How new an emoji split's test captions are: the share of test names that occur whole among
the training names, and the share of their words that occur in training names. This says
what a captioner could copy: on a cross-style split every test name is a training name; on a
held-out-concept split the names are new but their words mostly are not.

  python scripts/caption_overlap.py --split=held_out_twitter
  python scripts/caption_overlap.py --split=twitter_to_google

Captions are prepared as experiments/emoji_caption.py trains on them (the name, lower case).
"""
from __future__ import annotations

import argparse
import json

from crossmodal.data import emoji


def names(split: str, config: str) -> list[str]:
  source = emoji.get_data_source(split, config=config)
  model_examples = emoji.ModelExamples(source)  # the captions the model is trained on
  return [model_examples.caption(source[i]) for i in range(len(source))]


def overlap(train: list[str], test: list[str]) -> dict[str, float]:
  seen_names, seen_words = set(train), {w for n in train for w in n.split()}
  words = [w for n in test for w in n.split()]
  return {'test_captions': len(test),
          'names_seen_in_train': sum(n in seen_names for n in test) / len(test),
          'words_seen_in_train': sum(w in seen_words for w in words) / len(words),
          'captions_with_every_word_seen': sum(all(w in seen_words for w in n.split())
                                               for n in test) / len(test)}


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
  parser.add_argument('--split', default='held_out_twitter', help='emoji builder config')
  args = parser.parse_args()
  train = names('train', args.split)
  print(json.dumps({'split': args.split, **overlap(train, names('test', args.split))},
                   indent=2))


if __name__ == '__main__':
  main()
