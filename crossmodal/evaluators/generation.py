"""Generation: text decoded from the source modalities (the generation objective's decoder)
against the reference, with greedy or beam search inside jit (models/text_decoder.py).

Scores: the teacher-forced loss (the generation objective's mean token cross-entropy); exact
match; character error rate (Levenshtein edits over reference characters, summed over the
split); token F1 (the bag-of-words F1 over whitespace tokens, as SQuAD's but without its
normalisation, averaged over examples); corpus BLEU (sacrebleu: 4-grams, 13a tokenisation,
with effective order, so that one-word references, which have no 4-grams, still score: a
perfect transcription of single words is 1, not 0). Every score is a fraction in [0, 1]
(BLEU is sacrebleu's score / 100), so tables show them all as percentages. A table of
examples (`generation_<split>.md`) and a picture of sources with their reference and
generated text go to `<workdir>/eval/`.
"""
from __future__ import annotations

import collections
import functools
import os
from typing import Any, Sequence

import jax
import numpy as np
import sacrebleu

from crossmodal import files
from crossmodal import objectives as objectives_lib
from crossmodal.data import sources as sources_lib
from crossmodal.evaluators import common
from crossmodal.models import text as text_lib
from crossmodal.models import text_decoder as text_decoder_lib


_BLEU = sacrebleu.BLEU(effective_order=True)


def edit_distance(a: str, b: str) -> int:
  """Levenshtein distance (insertions, deletions, substitutions of characters)."""
  row = list(range(len(b) + 1))
  for i, ca in enumerate(a, 1):
    prev, row[0] = row[0], i
    for j, cb in enumerate(b, 1):
      prev, row[j] = row[j], min(row[j] + 1, row[j - 1] + 1, prev + (ca != cb))
  return row[-1]


def shown(text: str) -> str:
  """Text as the table and picture show it: control bytes an undertrained decoder writes
  (newlines among them) escaped, so each example stays on one line."""
  return ''.join(c if c.isprintable() else repr(c)[1:-1] for c in text)


def token_f1(prediction: str, reference: str) -> float:
  """F1 of the whitespace tokens (a bag: repeated tokens count as often as shared)."""
  pred, ref = prediction.split(), reference.split()
  if not pred or not ref:
    return float(pred == ref)
  common_ = sum((collections.Counter(pred) & collections.Counter(ref)).values())
  if not common_:
    return 0.0
  precision, recall = common_ / len(pred), common_ / len(ref)
  return 2 * precision * recall / (precision + recall)


def scores(predictions: Sequence[str], references: Sequence[str]) -> dict[str, float]:
  """exact_match, cer, token_f1 and bleu (in [0, 1]) of paired strings."""
  if len(predictions) != len(references) or not references:
    raise ValueError(f'scores: {len(predictions)} predictions for {len(references)} '
                     'references; need equal, non-zero counts')
  edits = sum(edit_distance(p, r) for p, r in zip(predictions, references))
  return {
      'exact_match': float(np.mean([p == r for p, r in zip(predictions, references)])),
      'cer': edits / max(sum(len(r) for r in references), 1),
      'token_f1': float(np.mean([token_f1(p, r) for p, r in zip(predictions, references)])),
      'bleu': float(_BLEU.corpus_score(list(predictions), [list(references)]).score) / 100,
  }


class Evaluator(common.Evaluator):
  """Options: split; beam_size (1 = greedy); length_penalty (GNMT's alpha; beam search
  only); cache (False reruns the whole prefix each step: slower, the same tokens);
  hide (modalities hidden from the model, e.g. to score a two-source model on one);
  max_examples (0 = the whole split); examples (rows of the table and the picture)."""
  HEADLINES = (r'^(exact_match|cer|token_f1|bleu)$',)

  def __init__(self, model, objectives=None, data=None, *, split: str = 'test',
               beam_size: int = 1, length_penalty: float = 0.6, cache: bool = True,
               hide: tuple[str, ...] = (), max_examples: int = 0, examples: int = 12):
    super().__init__(model, objectives, data, split=split)
    if model.text_decoder is None:
      self.fail('the model has no text decoder; set config.objectives.generation.weight > 0')
    if beam_size < 1:
      self.fail(f'{beam_size} must be >= 1 (1 = greedy)', 'beam_size')
    if length_penalty < 0:
      self.fail(f'{length_penalty} must be >= 0', 'length_penalty')
    bad = [m for m in hide if m not in self.modalities]
    if bad:
      self.fail(f'{bad} are not modalities of the model {self.modalities}', 'hide')
    if set(model.text_decoder.sources) <= set(hide):
      self.fail(f'{tuple(hide)} hides every source {tuple(model.text_decoder.sources)}', 'hide')
    if max_examples < 0 or examples < 0:
      self.fail('max_examples and examples must be >= 0')
    self.hide, self.max_examples, self.examples = tuple(hide), max_examples, examples
    self.class_texts = tuple(model.text_decoder.class_texts)
    # One object per evaluator, so the engine compiles the decoding once per run.
    self._apply = functools.partial(_apply, beam_size=beam_size,
                                    length_penalty=float(length_penalty), cache=cache)

  def metrics(self) -> dict[str, str]:
    return {'exact_match': common.MAX, 'cer': common.MIN, 'token_f1': common.MAX,
            'bleu': common.MAX, 'loss': common.MIN}

  def run(self, predict, batches, workdir: str) -> dict[str, Any]:
    keep = () if self.class_texts else ('text',)
    visible = np.array([m not in self.hide for m in self.modalities])
    got = predict.over(_select, batches(), keep=keep, apply=self._apply,
                       present_fn=lambda n: np.broadcast_to(visible, (n, len(visible))).copy(),
                       max_examples=self.max_examples)
    generated = text_lib.decode(got['generated'])
    if self.class_texts:
      references = [self.class_texts[i] for i in got['label']]
    else:
      references = text_lib.decode(got['text'])
    result = {'num_examples': len(references), 'loss': float(np.mean(got['loss'])),
              **scores(generated, references)}
    if self.examples:
      result['table'] = self._table(generated, references, got['score'], workdir)
      source = next((m for m in self.model.text_decoder.sources
                     if m in ('image', 'audio') and m not in self.hide), None)
      if source is not None:
        result['picture'] = self._picture(batches, source, generated, references, workdir)
    return result

  def _name(self) -> str:
    return f'generation_{self.split}' + ''.join(f'_without_{m}' for m in self.hide)

  def _table(self, generated, references, score, workdir: str) -> str:
    rows = ['| # | reference | generated | score |', '|---|---|---|---|']
    cell = lambda t: shown(t).replace('|', '\\|')
    rows += [f'| {i} | {cell(references[i])} | {cell(generated[i])} | {score[i]:.3f} |'
             for i in range(min(self.examples, len(references)))]
    path = os.path.join(workdir, common.EVAL_DIR, self._name() + '.md')
    if jax.process_index() == 0:  # every process holds the same table
      files.write_file(path, '\n'.join(rows) + '\n')
    return path

  def _picture(self, batches, modality: str, generated, references, workdir: str) -> str:
    """The first examples' sources (process 0's first batch holds the split's first rows)
    with their reference and generated text."""
    first = batches()
    try:
      source = next(first)[modality]
    finally:
      first.close()
    count = min(self.examples, len(source), len(references))
    plt = common.pyplot()
    cols = min(count, 6)
    rows = -(-count // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(2.2 * cols, 2.4 * rows), squeeze=False)
    for i, ax in enumerate(axes.ravel()):
      ax.set_xticks([])
      ax.set_yticks([])
      if i >= count:
        ax.axis('off')
        continue
      if modality == 'image':
        ax.imshow(source[i].squeeze(), cmap='gray' if source[i].shape[-1] == 1 else None)
      else:
        ax.specgram(source[i], Fs=sources_lib.SAMPLE_RATE, NFFT=256, noverlap=176)
      mark = '' if generated[i] == references[i] else ' (x)'
      ax.set_title(f'ref: {shown(references[i])[:28]}\ngen: {shown(generated[i])[:28]}{mark}',
                   fontsize=7)
    return common.save_figure(fig, workdir, self._name() + '.png')


def _apply(model, variables, batch, present, *, beam_size, length_penalty, cache):
  out = text_decoder_lib.generate(model, variables, batch, present, beam_size=beam_size,
                                  length_penalty=length_penalty, cache=cache)
  targets = objectives_lib.generation_targets(model.text_decoder, batch)
  out['loss'] = objectives_lib.token_cross_entropy(out.pop('generation_logits'), targets[:, 1:])
  return out


def _select(out):
  return {'generated': out['generated'], 'score': out['score'], 'loss': out['loss']}
