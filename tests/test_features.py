"""JAX log-mel / MFCC against librosa on real FSDD clips, and jit/vmap consistency."""
import glob
import os

import jax
import librosa
import numpy as np
import pytest
import soundfile as sf

from crossmodal.data import features
from crossmodal.data import sources

_SOURCES = sources.resolve_manual_dir()  # $CROSSMODAL_MANUAL_DIR or <repo>/../shared/data
FSDD = str(_SOURCES / 'fsdd' / 'recordings') if _SOURCES else '<no source directory>'
# Measured max |JAX - librosa| over the 20 clips below (float32 JAX vs float64 librosa):
# log-mel 1.2e-3 dB (db) / 3e-5 (log), MFCC 2.7e-4 (db) / 3e-5 (log). Tolerances leave ~4x.
TOL = {('log_mel', 'db'): 5e-3, ('log_mel', 'log'): 2e-4,
       ('mfcc', 'db'): 2e-3, ('mfcc', 'log'): 2e-4}


@pytest.fixture(scope='module')
def clips():
  """20 clips spread over digits and speakers, at their native (varying) lengths."""
  files = sorted(glob.glob(os.path.join(FSDD, '*.wav')))
  assert len(files) >= 3000, f'FSDD recordings missing under {FSDD}'
  out = []
  for path in files[::150][:20]:
    data, rate = sf.read(path, dtype='int16')
    assert rate == 8000
    out.append(data.astype(np.float32) / 32768.0)
  return out


@pytest.fixture(scope='module')
def batch(clips):
  """The clips zero-padded / cut to 1 s, as AV-MNIST stores them."""
  out = np.zeros((len(clips), 8000), np.float32)
  for row, clip in zip(out, clips):
    row[:min(len(clip), 8000)] = clip[:8000]
  return out


def test_mel_filterbank_matches_librosa():
  for opts in ({}, {'n_mels': 40, 'fmin': 60.0, 'fmax': 3800.0, 'n_fft': 512}):
    p = features.FeatureParams(**opts)
    ref = librosa.filters.mel(sr=p.sample_rate, n_fft=p.n_fft, n_mels=p.n_mels, fmin=p.fmin,
                              fmax=p.max_frequency, htk=False, norm='slaney', dtype=np.float64)
    ours = features.mel_filterbank(p)
    assert ours.shape == (p.n_mels, p.n_fft // 2 + 1)
    np.testing.assert_allclose(ours, ref, rtol=1e-9, atol=1e-12)


CONFIGS = [
    dict(),  # defaults: constant padding, power_to_db with top_db 80
    dict(pad_mode='reflect'),
    dict(log_scale='log'),
    dict(pad_mode='reflect', log_scale='log', win_length=200, hop_length=64, n_mels=40,
         n_mfcc=13, fmin=60.0, fmax=3800.0),
    dict(top_db=None, amin=1e-5),
]


def _check_parity(waveforms, cfg):
  p = features.FeatureParams.from_config(cfg)
  for fn, ref_fn, width in ((features.log_mel, features.librosa_log_mel, p.n_mels),
                            (features.mfcc, features.librosa_mfcc, p.n_mfcc)):
    ours = np.asarray(jax.jit(lambda x, fn=fn: fn(x, cfg))(waveforms))
    ref = ref_fn(np.asarray(waveforms), cfg)
    assert ours.shape == ref.shape == (
        waveforms.shape[:-1] + (features.num_frames(waveforms.shape[-1], cfg), width))
    np.testing.assert_allclose(ours, ref, rtol=0, atol=TOL[fn.__name__, p.log_scale])


@pytest.mark.parametrize('opts', CONFIGS, ids=lambda o: ','.join(f'{k}={v}' for k, v in o.items())
                         or 'defaults')
def test_matches_librosa_on_fsdd_batch(batch, opts):
  """All 20 clips in one jitted call (1 s each, zero tails as in AV-MNIST)."""
  _check_parity(batch, features.features_config(**opts))


@pytest.mark.parametrize('pad_mode', features.PAD_MODES)
def test_matches_librosa_at_native_lengths(clips, pad_mode):
  """Unpadded clips of odd lengths: exercises the edge padding on real signal."""
  for clip in clips[:3]:
    _check_parity(clip, features.features_config(pad_mode=pad_mode))


def test_reference_mfcc_is_librosa_mfcc_with_defaults(clips):
  cfg = features.features_config()
  direct = librosa.feature.mfcc(y=clips[0].astype(np.float64), sr=8000, n_fft=256,
                                hop_length=80, n_mels=64, n_mfcc=20).T
  np.testing.assert_allclose(features.librosa_mfcc(clips[0], cfg), direct, rtol=1e-12, atol=1e-9)


@pytest.mark.parametrize('fn', [features.log_mel, features.mfcc], ids=['log_mel', 'mfcc'])
def test_jit_vmap_equals_per_clip(batch, fn):
  cfg = features.features_config()
  batched = np.asarray(jax.jit(jax.vmap(lambda x: fn(x, cfg)))(batch))
  per_clip = np.stack([np.asarray(fn(clip, cfg)) for clip in batch])
  leading = np.asarray(jax.jit(lambda x: fn(x, cfg))(batch))  # [B, T] directly, no vmap
  assert batched.shape == (len(batch), 101, 64 if fn is features.log_mel else 20)
  # Batched and single FFTs round differently in float32; values span about +-300.
  np.testing.assert_allclose(batched, per_clip, rtol=0, atol=1e-3)
  np.testing.assert_allclose(leading, per_clip, rtol=0, atol=1e-3)


def test_db_floor_is_per_clip(batch):
  """Scaling a clip by 0.1 shifts its dB log-mel by exactly -20 dB: top_db is per clip."""
  cfg = features.features_config()
  pair = np.stack([batch[0], 0.1 * batch[0]])
  loud, quiet = np.asarray(features.log_mel(pair, cfg))
  np.testing.assert_allclose(quiet, loud - 20.0, atol=5e-3)
  assert loud.max() - loud.min() == pytest.approx(80.0, abs=1e-3)  # the floor is active


def test_silence_and_shapes():
  cfg = features.features_config(log_scale='log', log_offset=1e-6)
  out = np.asarray(features.log_mel(np.zeros((3, 800), np.float32), cfg))
  assert out.shape == (3, 11, 64)
  np.testing.assert_allclose(out, np.log(1e-6), rtol=1e-6)


def test_bad_input_and_config_errors():
  with pytest.raises(TypeError, match='int16'):
    features.log_mel(np.zeros(800, np.int16), features.features_config())
  with pytest.raises(ValueError,
                     match=r"unknown option\(s\) \['n_ffts'\]; valid options: .*'n_fft'"):
    features.FeatureParams.from_config({'n_ffts': 512})
  with pytest.raises(ValueError,
                     match=r"pad_mode='wrap': valid choices: \('constant', 'reflect'\)"):
    features.features_config(pad_mode='wrap')
  with pytest.raises(ValueError, match=r'win_length=512: must be <= n_fft \(256\)'):
    features.FeatureParams(win_length=512)
  with pytest.raises(ValueError, match=r'config.model.encoders.audio.features.n_mels=0: must be a '
                     'positive int'):
    features.FeatureParams.from_config({'n_mels': 0}, 'config.model.encoders.audio.features')
  with pytest.raises(ValueError, match='no FFT bin'):
    features.mel_filterbank(features.FeatureParams(n_mels=200))
  with pytest.raises(ValueError, match='reflect'):
    features.log_mel(np.zeros(100, np.float32), features.features_config(pad_mode='reflect'))
  # An option of the other log scale is an error, not silently ignored.
  with pytest.raises(ValueError, match="top_db=40.0: has no effect with log_scale='log'"):
    features.features_config(log_scale='log', top_db=40.0)
  with pytest.raises(ValueError, match="log_offset=0.01: has no effect with log_scale='db'"):
    features.features_config(log_offset=0.01)
