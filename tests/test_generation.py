"""Text generation from another modality: the causal decoder, decoding with and without the
key/value cache, beam width 1 against greedy, a decoder that learns a fixed mapping, the
generation objective against NumPy, its config errors, the text scores, and the generation
evaluator end to end."""
import os

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from crossmodal import config_utils
from crossmodal import evaluators
from crossmodal import files
from crossmodal import objectives
from crossmodal import train
from crossmodal.evaluators import generation
from crossmodal.models import model as model_lib
from crossmodal.models import text as text_lib
from crossmodal.models import text_decoder
from conftest import REPO, tiny_config

pytestmark = pytest.mark.usefixtures('fast_prng')  # tests/conftest.py

WORDS = ('zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight', 'nine')


def _model(modalities=('image', 'audio'), layers=1, **generation_fields):
  cfg = model_lib.default_model_config(modalities, 'concat', dim=32)
  if 'image' in modalities:
    cfg.encoders.image.token_stage = 2  # 3x3 image tokens
    cfg.encoders.image.norm = 'none'  # no batch statistics to thread through training
  obj = objectives.objectives_config(classification=0.0, generation=1.0)
  obj.generation.update(sources=tuple(modalities), class_texts=WORDS, max_len=8, layers=layers,
                        **generation_fields)
  return model_lib.build_model(cfg, 10, objectives=obj), obj


def _batch(n=10, seed=0):
  rng = np.random.default_rng(seed)
  return {'image': rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8),
          'audio': (0.1 * rng.normal(size=(n, 8000))).astype(np.float32),
          'label': np.arange(n) % 10}


def test_causal_decoder_ignores_later_tokens():
  """The logits at positions <= t do not change when the tokens after t do (both attention
  implementations, which agree)."""
  rng = np.random.default_rng(0)
  contexts = [jnp.asarray(rng.normal(size=(2, 5, 16)), jnp.float32)]
  masks = [jnp.ones((2, 5), bool)]
  ids = jnp.asarray(rng.integers(3, 259, (2, 9)), jnp.int32)
  ids = ids.at[1, 7:].set(text_lib.PAD_ID)  # a padded target, as real ones are
  changed = ids.at[:, 5:7].set(jnp.asarray(rng.integers(3, 259, (2, 2)), jnp.int32))
  make = lambda attention: text_decoder.TextDecoder(dim=16, max_len=9, attention=attention)
  params = make('einsum').init(jax.random.key(0), ids, contexts, masks)
  logits = {a: make(a).apply(params, ids, contexts, masks) for a in ('einsum', 'dot_product')}
  np.testing.assert_allclose(logits['einsum'], logits['dot_product'], atol=1e-5)
  after = make('einsum').apply(params, changed, contexts, masks)
  np.testing.assert_allclose(after[:, :5], logits['einsum'][:, :5], atol=1e-6)
  assert np.abs(after[:, 5:7] - logits['einsum'][:, 5:7]).max() > 1e-3


@pytest.mark.parametrize('beam_size', [1, 3])
def test_cached_and_uncached_decoding_agree(beam_size):
  """One position per step with the key/value cache gives the tokens and scores of rerunning
  the whole prefix each step, greedy and beam search, from an untrained two-source model."""
  model, _ = _model(layers=2)
  batch = _batch(4)
  variables = model.init(jax.random.key(1), batch)
  run = lambda cache: jax.jit(lambda v, b: text_decoder.generate(
      model, v, b, beam_size=beam_size, length_penalty=0.6, cache=cache))(variables, batch)
  cached, uncached = run(True), run(False)
  np.testing.assert_array_equal(cached['generated'], uncached['generated'])
  np.testing.assert_allclose(cached['score'], uncached['score'], rtol=1e-5)
  assert cached['generated'].shape == (4, 8) and np.all(cached['generated'][:, 0] == 1)
  # Untrained, the decoder emits bytes: never BOS after the start, and PAD only after EOS.
  for row in np.asarray(cached['generated']):
    end = list(row).index(text_lib.EOS_ID) + 1 if text_lib.EOS_ID in row else len(row)
    assert not np.isin(row[1:end], text_decoder.NEVER_EMITTED).any()
    assert np.all(row[end:] == text_lib.PAD_ID)


def test_beam_width_one_is_greedy_on_the_model():
  model, _ = _model()
  batch = _batch(5, seed=3)
  variables = model.init(jax.random.key(2), batch)
  greedy = text_decoder.generate(model, variables, batch, beam_size=1)
  from crossmodal.models import decoding  # the beam path with width 1
  decoder = model.text_decoder_module()
  contexts, masks = model.apply(variables, batch)['generation_context']
  params = {'params': variables['params']['text_decoder']}
  never = jnp.zeros((text_lib.VOCAB_SIZE,), bool).at[jnp.array(text_decoder.NEVER_EMITTED)].set(True)

  def step(seqs, t, cache):
    logits = decoder.apply(params, seqs, contexts, masks)[:, t]
    return jnp.where(never, -jnp.inf, logits), cache
  seqs, scores = decoding.beam_search(step, (), 5, 1, 8, length_penalty=0.0)
  np.testing.assert_array_equal(seqs[:, 0], greedy['generated'])
  np.testing.assert_allclose(scores[:, 0], greedy['score'], rtol=1e-5)


@pytest.mark.slow
def test_decoder_learns_a_fixed_mapping():
  """Ten fixed images, each to its digit's word: after 150 Adam steps of teacher forcing the
  decoder writes every word exactly, greedy and with beam search; before, it writes none."""
  model, obj = _model(modalities=('image',))
  batch = _batch(10, seed=4)
  params = model.init(jax.random.key(3), batch)['params']
  decode = jax.jit(lambda p, beam: text_decoder.generate(model, {'params': p}, batch,
                                                         beam_size=beam), static_argnums=1)
  assert not any(a == b for a, b in zip(text_lib.decode(decode(params, 1)['generated']), WORDS))

  def loss_fn(p):
    out = model.apply({'params': p}, batch, train=True)
    total, count = objectives.compute(obj, out, batch)['generation']
    return total / count

  opt = optax.adam(3e-3)

  @jax.jit
  def step(p, s):
    loss, grads = jax.value_and_grad(loss_fn)(p)
    updates, s = opt.update(grads, s, p)
    return optax.apply_updates(p, updates), s, loss

  state = opt.init(params)
  for _ in range(150):
    params, state, loss = step(params, state)
  assert float(loss) < 0.05
  for beam in (1, 3):
    assert text_lib.decode(decode(params, beam)['generated']) == list(WORDS), beam


def test_generation_objective_is_mean_token_cross_entropy():
  """Per example: the mean over its non-padding target tokens of -log softmax; an example
  whose sources are all missing from the data does not count."""
  model, obj = _model()
  batch = {**_batch(3), 'label': np.array([7, 1, 3]),
           'present': np.array([[True, True, False], [False, False, False],
                                [False, True, False]])}
  out = model.apply(model.init(jax.random.key(0), batch), batch)
  total, count = objectives.compute(obj, out, batch)['generation']
  logits = np.asarray(out['generation_logits'], np.float64)
  targets = text_lib.encode([WORDS[i] for i in batch['label']], 8)[:, 1:]
  logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
  expected = 0.0
  for b in (0, 2):  # example 1 has neither image nor audio
    real = targets[b] != text_lib.PAD_ID
    expected += -logp[b, np.arange(7), targets[b]][real].mean()
  assert float(count) == 2.0
  np.testing.assert_allclose(float(total), expected, rtol=1e-5)


def test_generation_config_errors():
  error = lambda match: pytest.raises(config_utils.ConfigError, match=match)
  obj = objectives.objectives_config(generation=1.0)
  obj.generation.sources = ('image', 'text')
  with error(r"generation: the target is the batch text, which sources=\('image', 'text'\)"):
    objectives.check_config(obj, ('image', 'text'))
  obj.generation.sources = ('audio',)
  with error(r"generation.sources=\('audio',\): valid choices: \('image', 'text'\)"):
    objectives.check_config(obj, ('image', 'text'))
  obj.generation.update(sources=('image',), class_texts=('a' * 40,))
  with error(r"class_texts: \['a{40}'\] do not fit max_len=40"):
    objectives.check_config(obj, ('image', 'text'))
  obj.generation.update(class_texts=(), combine='sum')
  with error(r"generation.combine='sum': valid choices"):
    objectives.check_config(obj, ('image', 'text'))
  config = tiny_config('size=tiny,modalities=image+text')
  config.objectives = objectives.objectives_config(generation=1.0)
  config.objectives.generation.update(sources=('image',), max_len=40)
  with error(r'generation.max_len=40 differs from config.data.text_length=32'):
    train.check_config(config)
  config.objectives.generation.update(max_len=32, heads=3)
  with error(r'generation.heads=3 does not divide config.model.dim'):
    train.check_config(config)
  config = tiny_config()  # image and audio: no text to read
  config.objectives = objectives.objectives_config(generation=1.0)
  with error(r"the target is the batch text, but dataset 'synthetic' has none"):
    train.check_config(config)
  model, _ = _model()
  plain = model_lib.build_model(model_lib.default_model_config(), 10)
  with error('no text decoder'):
    evaluators.build_all({'generation': evaluators.evaluator_config('generation')}, plain)
  with error(r"hide: \['text'\] are not modalities"):
    evaluators.build_all({'generation': evaluators.evaluator_config('generation',
                                                                    hide=('text',))}, model)
  with error('hides every source'):
    evaluators.build_all({'generation': evaluators.evaluator_config(
        'generation', hide=('image', 'audio'))}, model)


def test_text_scores():
  assert generation.edit_distance('kitten', 'sitting') == 3
  assert generation.edit_distance('', 'abc') == 3 and generation.edit_distance('abc', 'abc') == 0
  assert generation.token_f1('red heart', 'red heart') == 1.0
  assert generation.token_f1('red face', 'red heart') == pytest.approx(0.5)
  assert generation.token_f1('a a b', 'a b b') == pytest.approx(2 / 3)  # bags, not sets
  s = generation.scores(['seven', 'one', 'red heart'], ['seven', 'nine', 'red heart'])
  assert s['exact_match'] == pytest.approx(2 / 3)
  assert s['cer'] == pytest.approx(generation.edit_distance('one', 'nine') / 18)
  assert s['token_f1'] == pytest.approx(2 / 3)
  assert generation.scores(['a cat sat on the mat'], ['a cat sat on the mat'])['bleu'] == (
      pytest.approx(1.0))
  # One-word references have no 4-grams: effective order still scores them.
  assert generation.scores(WORDS[:3], WORDS[:3])['bleu'] == pytest.approx(1.0)
  assert generation.scores(['zero', 'one', 'one'], WORDS[:3])['bleu'] == pytest.approx(2 / 3)
  assert generation.shown('a\nb|\x1b') == 'a\\nb|\\x1b'
  with pytest.raises(ValueError, match='need equal, non-zero counts'):
    generation.scores(['a'], [])


def test_caption_overlap_by_hand():
  overlap = config_utils.load_module(os.path.join(REPO, 'scripts', 'caption_overlap.py'),
                                     '_caption_overlap').overlap
  got = overlap(['red heart', 'blue car', 'red car'], ['red car', 'blue heart', 'green heart'])
  assert got['test_captions'] == 3
  assert got['names_seen_in_train'] == pytest.approx(1 / 3)
  assert got['words_seen_in_train'] == pytest.approx(5 / 6)
  assert got['captions_with_every_word_seen'] == pytest.approx(2 / 3)


@pytest.mark.slow
def test_generation_evaluator_end_to_end(tmp_path):
  """A tiny synthetic run that captions its images: the evaluator's record, table and picture
  (greedy in the loop; beam search and a hidden modality at the end)."""
  config = tiny_config('size=tiny,modalities=image+text')
  config.objectives = objectives.objectives_config(classification=1.0, generation=1.0)
  config.objectives.generation.update(sources=('image',), max_len=32, layers=1)
  config.evaluators.generation = evaluators.evaluator_config('generation', every=6, examples=4)
  config.evaluators.beam = evaluators.evaluator_config(
      'generation', beam_size=2, hide=('text',), max_examples=16)
  workdir = str(tmp_path / 'w')
  final = train.train_and_evaluate(config, workdir).final
  for name, size in (('generation', 40), ('beam', 16)):
    r = final[name]
    assert r['num_examples'] == size
    assert 0 <= r['exact_match'] <= 1 and r['cer'] >= 0 and 0 <= r['bleu'] <= 1
  with open(final['generation']['table'], encoding='utf-8') as f:
    table = f.read()
  assert table.count('\n') == 2 + 4 and os.path.exists(final['generation']['picture'])
  assert final['beam']['table'].endswith('generation_test_without_text.md')
  records = files.read_jsonl(os.path.join(workdir, 'metrics.jsonl'))
  assert {'generation', 'eval_generation', 'eval_beam'} <= {r['split'] for r in records}
