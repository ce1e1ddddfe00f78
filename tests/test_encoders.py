"""Encoders, their config registry, the byte tokenizer and the classifier head."""
import os
import subprocess
import sys
import textwrap

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import soundfile as sf

from crossmodal.data import features as features_lib
from crossmodal.data import sources
from crossmodal.models import encoders as E
from crossmodal.models import heads
from crossmodal.models import text as T
from conftest import TINY_ENCODERS

DIM = 8
B = 2
_SOURCES = sources.resolve_manual_dir()  # $CROSSMODAL_MANUAL_DIR or <repo>/../shared/data
FSDD = str(_SOURCES / 'fsdd' / 'recordings') if _SOURCES else '<no source directory>'

# Tiny versions of every encoder (tests/conftest.py). Default sizes are checked abstractly in
# test_lenets_mirror_multibench_avmnist and by the param-count test in test_model.py.
TINY = TINY_ENCODERS
AUDIO_T = 1600  # 0.2 s -> 1 + 1600 // 80 = 21 frames x 64 mels
# Expected token count of each tiny encoder, derived by hand from the architecture.
EXPECTED_TOKENS = {
    ('image', 'lenet'): 2 * 2,  # 16 -> 8 -> 4 -> 2 (three conv + pool stages)
    ('image', 'cnn'): 8 * 8,  # second stage halves 16 -> 8
    ('image', 'vit'): (16 // 4) ** 2,
    ('audio', 'lenet'): (21 // 8) * (64 // 8),  # 21 -> 10 -> 5 -> 2, 64 -> 8
    ('audio', 'ast'): ((21 - 8) // 8 + 1) * (64 // 8),
    ('text', 'transformer'): 12,
}


def _inputs(seed=0):
  rs = np.random.RandomState(seed)
  return {
      'image': jnp.asarray(rs.randint(0, 256, (B, 16, 16, 1)), jnp.uint8),
      'audio': jnp.asarray(0.3 * rs.randn(B, AUDIO_T), jnp.float32),
      'text': jnp.asarray(T.encode(['a cat on a mat', 'dog'], 12)),
  }


def _run(modality, cfg, x, *, train=False, seed=0, dropout_seed=1, dtype=jnp.float32):
  """Eager init + apply. Eager beats jit here: each tiny op compiles once and is reused by
  every later config with the same shapes, whereas jit recompiles each config whole."""
  enc = E.build_encoder(modality, cfg, DIM, dtype=dtype)
  variables = enc.init(jax.random.PRNGKey(seed), x, train=False)
  out, _ = enc.apply(variables, x, train=train, mutable=['batch_stats'],
                     rngs={'dropout': jax.random.PRNGKey(dropout_seed)})
  return variables, out


def _shapes(tree):
  return jax.tree.map(lambda a: a.shape, tree)


pytestmark = pytest.mark.usefixtures('fast_prng')  # tests/conftest.py

# ------------------------------------------------------------------ tokenizer


def test_tokenizer_round_trip_and_layout():
  texts = ['hello world', 'héllo wörld ✓ 🙂', '']
  ids = T.encode(texts, 40)
  assert ids.dtype == np.int32 and ids.shape == (3, 40)
  assert T.decode(ids) == texts
  # BOS, the UTF-8 bytes shifted by NUM_SPECIAL, EOS, then PAD.
  raw = list('hi'.encode())
  np.testing.assert_array_equal(T.encode('hi', 6)[0],
                                [T.BOS_ID, raw[0] + T.NUM_SPECIAL, raw[1] + T.NUM_SPECIAL,
                                 T.EOS_ID, T.PAD_ID, T.PAD_ID])
  assert T.PAD_ID == 0 and ids.max() < T.VOCAB_SIZE
  assert T.decode(T.encode('abc', 8)[0]) == 'abc'  # 1-D ids give a str


def test_tokenizer_truncates_at_character_boundary():
  text = 'ab🙂cd'  # the emoji is 4 bytes
  ids = T.encode(text, 2 + 4)  # room for 4 bytes: 'ab' + 2 bytes of the emoji
  assert T.decode(ids[0]) == 'ab'  # the partial character is dropped, not garbled
  np.testing.assert_array_equal(ids[0, 3:], [T.EOS_ID, T.PAD_ID, T.PAD_ID])
  assert T.decode(T.encode(text, 2 + 6)[0]) == 'ab🙂'


def test_tokenizer_rejects_bad_input():
  with pytest.raises(ValueError, match='max_len'):
    T.encode('abc', 2)
  with pytest.raises(TypeError, match='str'):
    T.encode([b'bytes'], 8)
  with pytest.raises(ValueError, match='ids must lie'):
    T.decode([T.VOCAB_SIZE])


# ------------------------------------------------------------------ shapes and registry


@pytest.mark.parametrize('modality,kind', sorted(TINY))
def test_encoder_output_shapes(modality, kind):
  cfg = E.encoder_config(modality, kind, **TINY[modality, kind])
  x = _inputs()[modality]
  variables, out = _run(modality, cfg, x)
  n = EXPECTED_TOKENS[modality, kind]
  assert isinstance(out, E.Encoded)
  assert out.tokens.shape == (B, n, DIM) and out.tokens.dtype == jnp.float32
  assert out.mask.shape == (B, n) and out.mask.dtype == jnp.bool_
  assert out.pooled.shape == (B, DIM)
  assert np.isfinite(np.asarray(out.tokens)).all() and np.isfinite(np.asarray(out.pooled)).all()
  if modality != 'text':
    assert bool(out.mask.all())
  else:
    np.testing.assert_array_equal(out.mask, x != T.PAD_ID)


def test_registry_lists_every_encoder():
  assert {m: sorted(t) for m, t in E.ENCODERS.items()} == {
      'image': ['cnn', 'lenet', 'vit'], 'audio': ['ast', 'lenet'], 'text': ['transformer']}


def test_config_holds_exactly_the_encoder_fields():
  cfg = E.encoder_config('image', 'lenet')
  assert set(cfg) == {'type', 'base_channels', 'extra_layers', 'norm', 'pool', 'token_stage',
                      'trunk', 'pixel_mean', 'pixel_std'}
  assert (cfg.base_channels, cfg.extra_layers, cfg.norm) == (6, 3, 'batch')  # LeNet(1, 6, 3)
  audio = E.encoder_config('audio', 'lenet')
  assert audio.extra_layers == 5  # MultiBench LeNet(1, 6, 5)
  assert set(audio.features) == set(features_lib.features_config())
  for (modality, kind) in TINY:
    cfg = E.encoder_config(modality, kind)
    fields = set(E.config_fields(E.ENCODERS[modality][kind])) | {'type'}
    assert set(cfg) == fields
    assert not {'dim', 'dtype', 'param_dtype', 'axis_name', 'name', 'parent'} & set(cfg)


def test_lenets_mirror_multibench_avmnist():
  """LeNet(1, 6, 3) on 28x28 images and LeNet(1, 6, 5) on 1 s of audio, checked abstractly."""
  cases = [('image', jax.ShapeDtypeStruct((2, 28, 28, 1), jnp.uint8), 3, 9, 2),
           ('audio', jax.ShapeDtypeStruct((2, 8000), jnp.float32), 5, 6 * 4, 3)]
  for modality, x, extra, staged_tokens, stage in cases:
    enc = E.build_encoder(modality, E.encoder_config(modality, 'lenet'), DIM)
    out, variables = jax.eval_shape(lambda x: enc.init_with_output(jax.random.PRNGKey(0), x), x)
    params = variables['params']
    channels = [1] + [6 * 2**i for i in range(extra + 1)]  # 6, 12, 24, ... doubling
    for i in range(extra + 1):
      k = 5 if i == 0 else 3
      assert params[f'conv_{i}'] == {'kernel': jax.ShapeDtypeStruct(
          (k, k, channels[i], channels[i + 1]), jnp.float32)}  # no bias: BatchNorm follows
    assert f'conv_{extra + 1}' not in params
    assert params['pool_proj']['kernel'].shape == (channels[-1], DIM)  # flattened 1x1 map
    assert out.tokens.shape == (2, 1, DIM) and out.pooled.shape == (2, DIM)
    staged = E.build_encoder(modality, E.encoder_config(modality, 'lenet', token_stage=stage),
                             DIM)
    out, _ = jax.eval_shape(lambda x: staged.init_with_output(jax.random.PRNGKey(0), x), x)
    assert out.tokens.shape == (2, staged_tokens, DIM)
  conv_weights = sum(5 * 5 * 6 if i == 0 else 9 * 6 * 2**(i - 1) * 6 * 2**i for i in range(4))
  assert conv_weights == 13758  # torch: sum of Conv2d weight numels of MultiBench LeNet(1,6,3)


def test_config_rejects_unknown_types_fields_and_choices():
  with pytest.raises(ValueError, match=r"valid choices: \['cnn', 'lenet', 'vit'\]"):
    E.encoder_config('image', 'resnet')
  with pytest.raises(ValueError, match=r"valid choices: \['audio', 'image', 'text'\]"):
    E.encoder_config('video', 'lenet')
  with pytest.raises(ValueError, match=r"unknown option\(s\) \['depth'\].*base_channels"):
    E.encoder_config('image', 'lenet', depth=3)
  with pytest.raises(ValueError, match=r"\['n_melz'\].*n_mels"):
    E.encoder_config('audio', 'ast', features={'n_melz': 32})
  # A field of another encoder type is rejected when building.
  cfg = E.encoder_config('image', 'lenet').to_dict()
  cfg['type'] = 'vit'
  with pytest.raises(ValueError, match=r"config.model.encoders.image: unknown option\(s\) "
                     r"\['base_channels'.*valid options: .*patch_size"):
    E.build_encoder('image', cfg, DIM)
  with pytest.raises(ValueError, match=r"norm='batchnorm'.*'batch', 'layer', 'group', 'none'"):
    E.build_encoder('image', E.encoder_config('image', 'cnn', norm='batchnorm'), DIM)
  with pytest.raises(ValueError, match=r"featurizer='stft'.*'log_mel', 'mfcc'"):
    E.build_encoder('audio', E.encoder_config('audio', 'lenet', featurizer='stft'), DIM)
  with pytest.raises(ValueError, match=r'encoders.image.extra_layers=-1: must be an int >= 0'):
    E.build_encoder('image', E.encoder_config('image', 'lenet', extra_layers=-1), DIM)
  with pytest.raises(ValueError, match=r'widths=\(8, 0\): must be all ints >= 1'):
    E.build_encoder('image', E.encoder_config('image', 'cnn', widths=(8, 0)), DIM)
  with pytest.raises(ValueError, match=r'dropout=1.0: must be in \[0, 1\)'):
    E.build_encoder('text', E.encoder_config('text', 'transformer', dropout=1.0), DIM)
  with pytest.raises(ValueError, match=r'encoders.audio.features.win_length=512: must be <= n_fft'):
    E.build_encoder('audio', {'type': 'ast', 'features': {'win_length': 512}}, DIM)
  with pytest.raises(ValueError, match='needs a `type`'):
    E.build_encoder('text', {'depth': 1}, DIM)
  locked = E.encoder_config('text', 'transformer')
  with pytest.raises(AttributeError):
    locked.not_a_field = 1  # configs are locked: typos fail at override time


def test_bad_inputs_raise_clear_errors():
  cfg = E.encoder_config('image', 'lenet', **TINY['image', 'lenet'])
  enc = E.build_encoder('image', cfg, DIM)
  with pytest.raises(ValueError, match=r'images \[B, H, W, C\]'):
    jax.eval_shape(enc.init, jax.random.PRNGKey(0), jnp.zeros((2, 16, 16), jnp.uint8))
  deep = E.build_encoder('image', E.encoder_config('image', 'lenet', extra_layers=6), DIM)
  with pytest.raises(ValueError, match='extra_layers=6'):
    jax.eval_shape(deep.init, jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 1), jnp.uint8))
  text = E.build_encoder('text', E.encoder_config('text', 'transformer', max_len=8), DIM)
  with pytest.raises(ValueError, match='max_len=8'):
    jax.eval_shape(text.init, jax.random.PRNGKey(0), jnp.ones((1, 9), jnp.int32))
  stage = E.build_encoder('image', E.encoder_config('image', 'lenet', token_stage=4), DIM)
  with pytest.raises(ValueError, match=r'token_stage=4 .*valid: -4..3'):
    jax.eval_shape(stage.init, jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1), jnp.uint8))
  heads_bad = E.build_encoder('image', E.encoder_config('image', 'vit', num_heads=3), DIM)
  with pytest.raises(ValueError, match='num_heads=3'):
    jax.eval_shape(heads_bad.init, jax.random.PRNGKey(0), jnp.zeros((1, 16, 16, 1), jnp.uint8))
  # On AV-MNIST's 28x28 the default LeNet's final map is 1x1: avg and flatten pooling agree.
  pool = E.build_encoder('image', E.encoder_config('image', 'lenet', pool='avg'), DIM)
  with pytest.raises(ValueError, match="pool='avg' has no effect on a 1x1 final map"):
    jax.eval_shape(pool.init, jax.random.PRNGKey(0), jnp.zeros((1, 28, 28, 1), jnp.uint8))


# ------------------------------------------------------------------ no dead options

# For every config field of every encoder: another valid value. Each must change the output
# or the parameter shapes (an option that does neither is dead).
ALTERNATIVES = {
    'base_channels': [3], 'extra_layers': [1], 'norm': None, 'pool': None, 'token_stage': [0],
    'trunk': None,
    'pixel_mean': [(0.3,)], 'pixel_std': [(0.7,)], 'widths': [(4, 6)], 'blocks_per_stage': [2],
    'depth': [2], 'num_heads': [4], 'mlp_ratio': [3], 'dropout': [0.3],
    'featurizer': ['mfcc'], 'features': [{'n_mels': 32}, {'log_scale': 'log'}],
    'spec_mean': [-40.0], 'spec_std': [10.0], 'vocab_size': [300], 'max_len': [20],
}
# Fields whose effect needs another field set (in both configs compared): a LeNet's trunk
# matters only when the tokens come from an earlier stage than the last.
FIELD_CONTEXT = {'trunk': {'token_stage': 0}}
PATCH_ALTERNATIVES = {'vit': {'patch_size': [8]},
                      'ast': {'patch_size': [(4, 8)], 'patch_stride': [(4, 4)]}}


def _alternatives(cls, field, current):
  if field in cls.CHOICES:
    return [c for c in cls.CHOICES[field] if c != current]
  for kind, table in PATCH_ALTERNATIVES.items():
    if field in table and cls is E.ENCODERS['image' if kind == 'vit' else 'audio'][kind]:
      return table[field]
  return ALTERNATIVES[field]


def _abstract(modality, cfg, x, train):
  """Shapes/dtypes of (variables, output) without computing anything (jax.eval_shape)."""
  enc = E.build_encoder(modality, cfg, DIM)

  def init_apply(x):
    variables = enc.init(jax.random.PRNGKey(0), x)
    out, _ = enc.apply(variables, x, train=train, mutable=['batch_stats'],
                       rngs={'dropout': jax.random.PRNGKey(1)})
    return variables, out
  return jax.tree.map(lambda a: (a.shape, a.dtype), jax.eval_shape(init_apply, x))


@pytest.mark.parametrize('modality,kind', sorted(TINY))
def test_every_config_field_changes_the_encoder(modality, kind):
  x = _inputs()[modality]
  cls = E.ENCODERS[modality][kind]
  tiny = TINY[modality, kind]
  fields = E.config_fields(cls)
  assert set(fields) - {'features'} <= set(ALTERNATIVES) | {'patch_size', 'patch_stride'}
  baseline, base_shapes = {}, {}
  for field in fields:
    context = {**tiny, **FIELD_CONTEXT.get(field, {})}
    base_cfg = E.encoder_config(modality, kind, **context)
    for value in _alternatives(cls, field, base_cfg[field]):
      train = field == 'dropout'  # dropout acts only in training
      key = (train, field in FIELD_CONTEXT)
      if key not in base_shapes:
        base_shapes[key] = _abstract(modality, base_cfg, x, train)
      cfg = E.encoder_config(modality, kind, **{**context, field: value})
      if _abstract(modality, cfg, x, train) != base_shapes[key]:
        continue  # parameter or output shapes changed
      if key not in baseline:  # same shapes: the output values must differ
        baseline[key] = _run(modality, base_cfg, x, train=train)[1].pooled
      pooled = _run(modality, cfg, x, train=train)[1].pooled
      assert not np.allclose(pooled, baseline[key], atol=1e-5), (
          f'{modality}/{kind}: {field}={value!r} has no effect')


# ------------------------------------------------------------------ randomness


def test_init_and_apply_are_deterministic_given_rng():
  cfg = E.encoder_config('image', 'cnn', **TINY['image', 'cnn'])
  x = _inputs()['image']
  v1, o1 = _run('image', cfg, x, seed=3)
  v2, o2 = _run('image', cfg, x, seed=3)
  v3, _ = _run('image', cfg, x, seed=4)
  jax.tree.map(np.testing.assert_array_equal, v1, v2)
  np.testing.assert_array_equal(o1.pooled, o2.pooled)
  assert not np.allclose(v1['params']['stem_conv']['kernel'], v3['params']['stem_conv']['kernel'])


@pytest.mark.parametrize('modality,kind', [('image', 'vit'), ('audio', 'ast'),
                                           ('text', 'transformer')])
def test_dropout_uses_the_rng_in_training_only(modality, kind):
  x = _inputs()[modality]
  cfg = E.encoder_config(modality, kind, **{**TINY[modality, kind], 'dropout': 0.3})
  no_dropout = E.encoder_config(modality, kind, **TINY[modality, kind])
  _, a = _run(modality, cfg, x, train=True, dropout_seed=1)
  _, b = _run(modality, cfg, x, train=True, dropout_seed=1)
  _, c = _run(modality, cfg, x, train=True, dropout_seed=2)
  np.testing.assert_array_equal(a.pooled, b.pooled)
  assert not np.allclose(a.pooled, c.pooled)
  _, e1 = _run(modality, cfg, x, train=False, dropout_seed=1)
  _, e2 = _run(modality, cfg, x, train=False, dropout_seed=2)
  _, e0 = _run(modality, no_dropout, x, train=False)  # same params: dropout has no params
  np.testing.assert_array_equal(e1.pooled, e2.pooled)
  np.testing.assert_allclose(e1.pooled, e0.pooled, rtol=1e-6, atol=1e-6)


# ------------------------------------------------------------------ text masking


@pytest.mark.parametrize('pool', ['mean', 'cls'])
def test_text_padding_does_not_change_the_output(pool):
  texts = ['a cat', 'dog']  # both fit in 12 tokens, so only the padding differs
  cfg = E.encoder_config('text', 'transformer', **{**TINY['text', 'transformer'], 'pool': pool})
  enc = E.build_encoder('text', cfg, DIM)
  short, long = jnp.asarray(T.encode(texts, 12)), jnp.asarray(T.encode(texts, 16))
  variables = enc.init(jax.random.PRNGKey(0), short)
  a, b = enc.apply(variables, short), enc.apply(variables, long)
  np.testing.assert_allclose(a.pooled, b.pooled, rtol=1e-5, atol=1e-5)
  np.testing.assert_array_equal(b.mask, np.asarray(long) != T.PAD_ID)
  # Real tokens are identical; the second text's extra padding is invisible to them.
  valid = np.asarray(a.mask)
  np.testing.assert_allclose(np.asarray(a.tokens)[valid], np.asarray(b.tokens)[:, :12][valid],
                             rtol=1e-5, atol=1e-5)
  if pool == 'mean':  # masked mean over real tokens only
    tok, m = np.asarray(b.tokens), np.asarray(b.mask)
    expected = np.stack([tok[i][m[i]].mean(0) for i in range(len(texts))])
    np.testing.assert_allclose(b.pooled, expected, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ audio


def _fsdd_clip(name, length=8000):
  wav, rate = sf.read(os.path.join(FSDD, name), dtype='float32')
  assert rate == 8000
  return np.pad(wav[:length], (0, max(0, length - len(wav))))


def test_audio_encoder_on_real_fsdd_clips_featurizes_like_librosa():
  clips = np.stack([_fsdd_clip('0_george_0.wav'), _fsdd_clip('7_jackson_3.wav')])
  # Forward pass of the tiny encoder on the first 0.2 s of each real clip.
  _, out = _run('audio', E.encoder_config('audio', 'lenet', **TINY['audio', 'lenet']),
                jnp.asarray(clips[:, :AUDIO_T]))
  assert out.tokens.shape == (2, EXPECTED_TOKENS['audio', 'lenet'], DIM)
  assert np.isfinite(np.asarray(out.tokens)).all()
  assert not np.allclose(out.pooled[0], out.pooled[1])
  # The encoder featurizes with its own nested features config (here 32 mel bins), on device,
  # and standardises with spec_mean / spec_std: compare with librosa on the full 1 s clips.
  cfg = E.encoder_config('audio', 'lenet', features={'n_mels': 32}, spec_mean=-50.0,
                         spec_std=20.0)
  enc = E.build_encoder('audio', cfg, DIM)
  spec = enc.apply({}, jnp.asarray(clips), method=lambda m, w: E._spectrogram(m, w))
  expected = (features_lib.librosa_log_mel(clips, cfg.features) + 50.0) / 20.0
  assert spec.shape == (2, 101, 32, 1)
  np.testing.assert_allclose(spec[..., 0], expected, atol=1e-3)


# ------------------------------------------------------------------ precision and pmap


@pytest.mark.parametrize('modality,kind', [('image', 'lenet'), ('text', 'transformer')])
def test_bfloat16_compute_keeps_float32_params(modality, kind):
  cfg = E.encoder_config(modality, kind, **TINY[modality, kind])
  x = _inputs()[modality]
  v16, o16 = _run(modality, cfg, x, dtype=jnp.bfloat16)
  v32, o32 = _run(modality, cfg, x)
  assert {a.dtype for a in jax.tree.leaves(v16)} == {jnp.dtype(jnp.float32)}
  jax.tree.map(np.testing.assert_array_equal, v16, v32)  # same init, whatever the dtype
  assert o16.tokens.dtype == jnp.bfloat16 and o16.pooled.dtype == jnp.bfloat16
  scale = np.abs(np.asarray(o32.pooled)).max()
  np.testing.assert_allclose(np.asarray(o16.pooled, np.float32), o32.pooled,
                             atol=0.05 * scale + 0.02)


PMAP_SCRIPT = textwrap.dedent('''
    import jax
    jax.config.update('jax_num_cpu_devices', 4)
    jax.config.update('jax_default_prng_impl', 'rbg')  # fast to compile (tests/conftest.py)
    import jax.numpy as jnp, numpy as np
    from crossmodal.models import encoders as E
    cfg = E.encoder_config('image', 'lenet', base_channels=4, extra_layers=2)
    x = jnp.asarray(np.random.RandomState(0).randint(0, 256, (8, 16, 16, 1)), jnp.uint8)
    single = E.build_encoder('image', cfg, 8)
    variables = single.init(jax.random.PRNGKey(0), x)
    ref, ref_state = jax.jit(lambda v, x: single.apply(v, x, train=True,
                                                       mutable=['batch_stats']))(variables, x)
    jax.block_until_ready(ref)
    for axis_name in ('batch', None):
      enc = E.build_encoder('image', cfg, 8, axis_name=axis_name)
      step = jax.pmap(lambda v, x: enc.apply(v, x, train=True, mutable=['batch_stats']),
                      axis_name='batch', in_axes=(None, 0))
      out, state = step(variables, x.reshape(4, 2, 16, 16, 1))
      jax.block_until_ready(out)
      pooled_err = float(np.abs(np.asarray(out.pooled).reshape(8, -1) - ref.pooled).max())
      stats_err = max(float(np.abs(np.asarray(a) - np.asarray(b)[None]).max()) for a, b in
                      zip(jax.tree.leaves(state), jax.tree.leaves(ref_state)))
      print(axis_name, jax.device_count(), pooled_err, stats_err)
''')


def test_batchnorm_under_pmap_matches_global_batch_statistics():
  env = {**os.environ, 'JAX_PLATFORMS': 'cpu'}
  env.pop('XLA_FLAGS', None)
  proc = subprocess.run([sys.executable, '-c', PMAP_SCRIPT], env=env, capture_output=True,
                        text=True, timeout=180)
  assert proc.returncode == 0, proc.stderr[-3000:]
  rows = {line.split()[0]: [float(v) for v in line.split()[1:]]
          for line in proc.stdout.strip().splitlines()}
  devices, pooled_err, stats_err = rows['batch']
  assert devices == 4
  assert pooled_err < 1e-4 and stats_err < 1e-5, rows
  # Without axis_name each device normalises with its own 2 examples: visibly different.
  assert rows['None'][1] > 1e-2, rows


# ------------------------------------------------------------------ head


def test_mlp_head_shapes_and_dropout():
  x = jnp.asarray(np.random.RandomState(0).randn(4, 12), jnp.float32)
  head = heads.MLPHead(hidden=(16, 8), num_classes=5, dropout=0.5)
  variables = head.init(jax.random.PRNGKey(0), x)
  assert _shapes(variables['params']) == {
      'hidden_0': {'kernel': (12, 16), 'bias': (16,)},
      'hidden_1': {'kernel': (16, 8), 'bias': (8,)},
      'logits': {'kernel': (8, 5), 'bias': (5,)}}
  eval_out = head.apply(variables, x)
  np.testing.assert_array_equal(eval_out, head.apply(variables, x, train=False))
  # Reference forward pass in NumPy.
  p = jax.tree.map(np.asarray, variables['params'])
  h = np.maximum(x @ p['hidden_0']['kernel'] + p['hidden_0']['bias'], 0)
  h = np.maximum(h @ p['hidden_1']['kernel'] + p['hidden_1']['bias'], 0)
  np.testing.assert_allclose(eval_out, h @ p['logits']['kernel'] + p['logits']['bias'],
                             rtol=1e-5, atol=1e-5)
  t1 = head.apply(variables, x, train=True, rngs={'dropout': jax.random.PRNGKey(1)})
  t2 = head.apply(variables, x, train=True, rngs={'dropout': jax.random.PRNGKey(2)})
  assert not np.allclose(t1, t2)
  linear = heads.MLPHead(hidden=(), num_classes=3)
  assert _shapes(linear.init(jax.random.PRNGKey(0), x)['params']) == {
      'logits': {'kernel': (12, 3), 'bias': (3,)}}


@pytest.mark.parametrize('modality, images', [('image', (2, 28, 28, 1)), ('audio', (2, 8000))])
def test_lenet_without_pooled_stops_at_the_token_stage(modality, images):
  x = jnp.zeros(images, jnp.uint8 if modality == 'image' else jnp.float32)
  cfg = E.encoder_config(modality, 'lenet', token_stage=1)
  enc = E.build_encoder(modality, cfg, 16, with_pooled=False)
  out, variables = enc.init_with_output(jax.random.PRNGKey(0), x)
  assert out.pooled is None and out.tokens.shape[-1] == 16
  assert sorted(variables['params']) == ['conv_0', 'conv_1', 'norm_0', 'norm_1', 'token_proj']
  full = E.build_encoder(modality, cfg, 16).init_with_output(jax.random.PRNGKey(0), x)[0]
  np.testing.assert_allclose(out.tokens, full.tokens, rtol=1e-6, atol=1e-6)
  with pytest.raises(ValueError, match="pool='avg' has no effect with an attention fusion"):
    E.build_encoder(modality, E.encoder_config(modality, 'lenet', pool='avg'), 16,
                    with_pooled=False).init(jax.random.PRNGKey(0), x)
