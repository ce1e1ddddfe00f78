"""Log-mel spectrogram and MFCC: a JAX version for the model, a librosa version as reference.

Featurisation runs on device inside the audio encoder (docs/architecture.md), so the input
pipeline ships raw waveforms and the accelerator does the signal processing in the same jitted
step. The JAX functions reproduce librosa exactly in definition -- centred frames padded with
`pad_mode` (librosa's default 'constant', or 'reflect'), a periodic Hann window zero-padded to
`n_fft`, the power spectrum, the Slaney mel filterbank (built once in NumPy, checked against
`librosa.filters.mel`), `power_to_db` with `amin`/`top_db` (or `log(x + log_offset)`), and an
orthonormal DCT-II for MFCC -- so a model trained on either agrees; tests/test_features.py
measures the remaining float32 difference on real FSDD clips.

Defaults suit 8 kHz speech (AV-MNIST / FSDD): `n_fft = win_length = 256` is a 32 ms window
(the usual 25-32 ms speech analysis window; 31.25 Hz bins; a power of two for the FFT),
`hop_length = 80` is the standard 10 ms frame rate (101 frames for a 1 s clip), and 64 Slaney
mel bands over 0-4 kHz are about 36 Hz apart at the low end, close to the FFT bin spacing: more
bands would only interpolate between the same bins (from 150 bands on, some get no bin
at all, which `mel_filterbank` rejects), fewer would blur formants. The log is librosa's
`power_to_db` (ref 1, amin 1e-10, top_db 80), so `mfcc` equals `librosa.feature.mfcc` with the
same parameters, and silence (exact zeros from padding) is floored relative to each clip's peak.
"""
from __future__ import annotations

import dataclasses
import functools
from collections.abc import Mapping
from typing import Any

import jax.numpy as jnp
import ml_collections
import numpy as np
from ml_collections import config_dict

from crossmodal import schema

PAD_MODES = ('constant', 'reflect')
LOG_SCALES = ('db', 'log')


def _window_fits(where: str, v: Mapping[str, Any]) -> str | None:
  if v['win_length'] > v['n_fft']:
    return f'{where}.win_length={v["win_length"]}: must be <= n_fft ({v["n_fft"]})'
  return None


def _mfcc_fits(where: str, v: Mapping[str, Any]) -> str | None:
  if v['n_mfcc'] > v['n_mels']:
    return f'{where}.n_mfcc={v["n_mfcc"]}: must be <= n_mels ({v["n_mels"]})'
  return None


def _band_fits(where: str, v: Mapping[str, Any]) -> str | None:
  nyquist = v['sample_rate'] / 2
  fmax = nyquist if v['fmax'] is None else float(v['fmax'])
  if not 0 <= v['fmin'] < fmax:
    return f'{where}.fmin={v["fmin"]!r}: must satisfy 0 <= fmin < fmax ({fmax})'
  if fmax > nyquist:
    return f'{where}.fmax={v["fmax"]!r}: must be <= sample_rate / 2 ({nyquist})'
  return None


def _log_scale_options_apply(where: str, v: Mapping[str, Any]) -> str | None:
  """Options of the other log scale must keep their defaults: set but unused is an error."""
  unused = ('amin', 'top_db') if v['log_scale'] == 'log' else ('log_offset',)
  defaults = schema.defaults_of(FeatureParams)
  changed = [name for name in unused if v[name] != defaults[name]]
  if changed:
    return (f'{where}.{changed[0]}={v[changed[0]]!r}: has no effect with log_scale='
            f'{v["log_scale"]!r} (leave it at {defaults[changed[0]]!r})')
  return None


@dataclasses.dataclass(frozen=True)
class FeatureParams(schema.Options):
  """Hashable feature parameters (so constants built from them can be cached)."""
  sample_rate: int = 8000
  n_fft: int = 256
  hop_length: int = 80
  win_length: int = 256
  n_mels: int = 64
  n_mfcc: int = 20
  fmin: float = 0.0
  fmax: float | None = None  # None: sample_rate / 2
  pad_mode: str = 'constant'  # how centred frames are padded at the clip edges
  log_scale: str = 'db'  # 'db': 10 log10(max(amin, S)) clipped at max - top_db; 'log': log(S + log_offset)
  amin: float = 1e-10
  top_db: float | None = 80.0  # None: no clipping relative to the clip's peak
  log_offset: float = 1e-6

  WHERE = 'features'
  CHOICES = {'pad_mode': PAD_MODES, 'log_scale': LOG_SCALES}
  RULES = {**{name: schema.POSITIVE_INT for name in (
               'sample_rate', 'n_fft', 'hop_length', 'win_length', 'n_mels', 'n_mfcc')},
           'fmax': schema.POSITIVE, 'amin': schema.POSITIVE, 'log_offset': schema.POSITIVE,
           'top_db': (lambda v: schema.number(v) and v >= 0, 'must be >= 0 or None')}
  NULLABLE = ('fmax', 'top_db')
  RELATIONS = (_window_fits, _mfcc_fits, _band_fits, _log_scale_options_apply)

  @property
  def max_frequency(self) -> float:
    return self.sample_rate / 2 if self.fmax is None else float(self.fmax)


def features_config(**overrides) -> ml_collections.ConfigDict:
  """Default feature options as a ConfigDict (fields of FeatureParams; see module doc)."""
  defaults = dataclasses.asdict(FeatureParams(**overrides))
  # Placeholders keep the optional floats type-checked when overridden from the command line.
  for name in ('fmax', 'top_db'):
    defaults[name] = config_dict.placeholder(float) if defaults[name] is None else defaults[name]
  return ml_collections.ConfigDict(defaults)


def num_frames(num_samples: int, cfg) -> int:
  """Frames produced for a clip of `num_samples` (centred framing, as librosa)."""
  p = FeatureParams.from_config(cfg)
  return 1 + num_samples // p.hop_length


# ---------------------------------------------------------------- constants (NumPy, cached)

def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
  """Slaney mel scale: linear below 1 kHz, logarithmic above (librosa htk=False)."""
  hz = np.asarray(hz, dtype=np.float64)
  f_sp, min_log_hz = 200.0 / 3, 1000.0
  min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
  return np.where(hz >= min_log_hz,
                  min_log_mel + np.log(np.maximum(hz, min_log_hz) / min_log_hz) / logstep,
                  hz / f_sp)


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
  mel = np.asarray(mel, dtype=np.float64)
  f_sp, min_log_hz = 200.0 / 3, 1000.0
  min_log_mel, logstep = min_log_hz / f_sp, np.log(6.4) / 27.0
  return np.where(mel >= min_log_mel, min_log_hz * np.exp(logstep * (mel - min_log_mel)),
                  f_sp * mel)


@functools.lru_cache(maxsize=32)
def _mel_filterbank(p: FeatureParams) -> np.ndarray:
  fft_freqs = np.fft.rfftfreq(p.n_fft, d=1.0 / p.sample_rate)
  mel_points = np.linspace(_hz_to_mel(p.fmin), _hz_to_mel(p.max_frequency), p.n_mels + 2)
  hz_points = _mel_to_hz(mel_points)
  widths = np.diff(hz_points)
  ramps = hz_points[:, None] - fft_freqs[None, :]
  lower = -ramps[:-2] / widths[:-1, None]
  upper = ramps[2:] / widths[1:, None]
  weights = np.maximum(0.0, np.minimum(lower, upper))
  weights *= (2.0 / (hz_points[2:] - hz_points[:-2]))[:, None]  # Slaney: unit area per band
  empty = np.flatnonzero(weights.max(axis=1) == 0)
  if empty.size:
    raise ValueError(f'features config: n_mels={p.n_mels} is too many for n_fft={p.n_fft} '
                     f'at sample_rate={p.sample_rate}: mel band(s) {empty.tolist()} contain no '
                     'FFT bin; lower n_mels or raise n_fft')
  weights.setflags(write=False)
  return weights


def mel_filterbank(cfg) -> np.ndarray:
  """Slaney-normalised mel filterbank, float64 [n_mels, n_fft // 2 + 1] (read-only)."""
  return _mel_filterbank(FeatureParams.from_config(cfg))


@functools.lru_cache(maxsize=32)
def _window(n_fft: int, win_length: int) -> np.ndarray:
  """Periodic Hann of win_length, zero-padded to n_fft at the centre (librosa's stft)."""
  n = np.arange(win_length)
  window = 0.5 - 0.5 * np.cos(2.0 * np.pi * n / win_length)
  left = (n_fft - win_length) // 2
  return np.pad(window, (left, n_fft - win_length - left))


@functools.lru_cache(maxsize=32)
def _dct_matrix(n_mels: int, n_mfcc: int) -> np.ndarray:
  """Orthonormal DCT-II rows 0..n_mfcc-1, [n_mfcc, n_mels] (scipy.fft.dct norm='ortho')."""
  k = np.arange(n_mfcc)[:, None]
  n = np.arange(n_mels)[None, :]
  basis = np.cos(np.pi * k * (2 * n + 1) / (2 * n_mels)) * np.sqrt(2.0 / n_mels)
  basis[0] /= np.sqrt(2.0)
  return basis


# ---------------------------------------------------------------- JAX features

def _check_waveform(waveform) -> jnp.ndarray:
  waveform = jnp.asarray(waveform)
  if not jnp.issubdtype(waveform.dtype, jnp.floating):
    raise TypeError(f'features: waveform must be floating point in [-1, 1], got dtype '
                    f'{waveform.dtype} (convert int16 audio with x / 32768)')
  if waveform.ndim < 1 or waveform.shape[-1] == 0:
    raise ValueError(f'features: waveform must have shape [..., T] with T > 0, got '
                     f'{waveform.shape}')
  return waveform.astype(jnp.promote_types(waveform.dtype, jnp.float32))


def power_mel(waveform, cfg) -> jnp.ndarray:
  """Mel power spectrogram: waveform [..., T] float -> [..., frames, n_mels]."""
  p = FeatureParams.from_config(cfg)
  x = _check_waveform(waveform)
  frames = num_frames(x.shape[-1], p)
  half = p.n_fft // 2
  if p.pad_mode == 'reflect' and x.shape[-1] <= half:
    raise ValueError(f'features: pad_mode="reflect" needs more than n_fft // 2 = {half} '
                     f'samples, got {x.shape[-1]}; use pad_mode="constant"')
  pad = [(0, 0)] * (x.ndim - 1) + [(half, half)]
  x = jnp.pad(x, pad, mode=p.pad_mode)
  index = p.hop_length * np.arange(frames)[:, None] + np.arange(p.n_fft)[None, :]
  windowed = x[..., index] * jnp.asarray(_window(p.n_fft, p.win_length), x.dtype)
  spectrum = jnp.fft.rfft(windowed, axis=-1)
  power = jnp.real(spectrum) ** 2 + jnp.imag(spectrum) ** 2
  return power @ jnp.asarray(mel_filterbank(p).T, x.dtype)


def log_mel(waveform, cfg) -> jnp.ndarray:
  """Log-mel spectrogram: waveform [..., T] float in [-1, 1] -> [..., frames, n_mels].

  'db' matches librosa.power_to_db(S, ref=1, amin, top_db) applied per clip (the top_db floor
  is relative to each clip's own peak); 'log' is log(S + log_offset).
  """
  p = FeatureParams.from_config(cfg)
  mel = power_mel(waveform, p)
  if p.log_scale == 'log':
    return jnp.log(mel + p.log_offset)
  db = 10.0 * jnp.log10(jnp.maximum(mel, p.amin))
  if p.top_db is not None:
    db = jnp.maximum(db, jnp.max(db, axis=(-2, -1), keepdims=True) - p.top_db)
  return db


def mfcc(waveform, cfg) -> jnp.ndarray:
  """MFCC: orthonormal DCT-II of `log_mel` over mel bands -> [..., frames, n_mfcc]."""
  p = FeatureParams.from_config(cfg)
  return log_mel(waveform, p) @ jnp.asarray(_dct_matrix(p.n_mels, p.n_mfcc).T, jnp.float32)


# ---------------------------------------------------------------- librosa reference

def _librosa_mel_kwargs(p: FeatureParams) -> dict[str, Any]:
  return dict(sr=p.sample_rate, n_fft=p.n_fft, hop_length=p.hop_length,
              win_length=p.win_length, window='hann', center=True, pad_mode=p.pad_mode,
              power=2.0, n_mels=p.n_mels, fmin=p.fmin, fmax=p.max_frequency, htk=False,
              norm='slaney')


def _per_clip(waveform: np.ndarray, fn) -> np.ndarray:
  waveform = np.asarray(waveform)
  if waveform.ndim == 1:
    return fn(waveform)
  flat = waveform.reshape(-1, waveform.shape[-1])
  out = np.stack([fn(clip) for clip in flat])
  return out.reshape(waveform.shape[:-1] + out.shape[1:])


def librosa_log_mel(waveform: np.ndarray, cfg) -> np.ndarray:
  """Reference log-mel with librosa (float64), [..., T] -> [..., frames, n_mels]."""
  import librosa  # pylint: disable=import-outside-toplevel  (slow import; reference only)
  p = FeatureParams.from_config(cfg)

  def one(clip):
    mel = librosa.feature.melspectrogram(y=clip.astype(np.float64), **_librosa_mel_kwargs(p))
    if p.log_scale == 'log':
      return np.log(mel + p.log_offset).T
    return librosa.power_to_db(mel, ref=1.0, amin=p.amin, top_db=p.top_db).T
  return _per_clip(waveform, one)


def librosa_mfcc(waveform: np.ndarray, cfg) -> np.ndarray:
  """Reference MFCC with librosa.feature.mfcc (float64), [..., T] -> [..., frames, n_mfcc]."""
  import librosa  # pylint: disable=import-outside-toplevel
  p = FeatureParams.from_config(cfg)

  def one(clip):
    # librosa.feature.mfcc(y=...) always uses power_to_db's default amin/top_db, so pass the
    # configured log-mel as S; with default options the two are identical.
    log_s = librosa_log_mel(clip, p).T
    return librosa.feature.mfcc(S=log_s, n_mfcc=p.n_mfcc, dct_type=2, norm='ortho').T
  return _per_clip(waveform, one)


# ---------------------------------------------------------------- librosa, batched float32

@functools.lru_cache(maxsize=32)
def _librosa_mel_basis(p: FeatureParams) -> np.ndarray:
  import librosa  # pylint: disable=import-outside-toplevel
  return librosa.filters.mel(sr=p.sample_rate, n_fft=p.n_fft, n_mels=p.n_mels, fmin=p.fmin,
                             fmax=p.max_frequency, htk=False, norm='slaney', dtype=np.float32)


def librosa_log_mel_batched(waveform: np.ndarray, cfg) -> np.ndarray:
  """`librosa_log_mel` as fast as librosa goes: one float32 `librosa.stft` over the batch
  [N, T], the mel filterbank built once (melspectrogram would rebuild it every call), then
  power_to_db with the top_db floor applied per clip by hand (librosa's is relative to the
  whole array's peak). -> [N, frames, n_mels] float32; equal to the float64 per-clip
  reference within float32 rounding (tests/test_benchmark.py)."""
  import librosa  # pylint: disable=import-outside-toplevel
  p = FeatureParams.from_config(cfg)
  stft = librosa.stft(np.asarray(waveform, np.float32), n_fft=p.n_fft, hop_length=p.hop_length,
                      win_length=p.win_length, window='hann', center=True, pad_mode=p.pad_mode)
  mel = _librosa_mel_basis(p) @ (stft.real ** 2 + stft.imag ** 2)  # [..., n_mels, frames]
  if p.log_scale == 'log':
    return np.swapaxes(np.log(mel + p.log_offset), -1, -2)
  db = librosa.power_to_db(mel, ref=1.0, amin=p.amin, top_db=None)
  if p.top_db is not None:
    db = np.maximum(db, db.max(axis=(-2, -1), keepdims=True) - p.top_db)
  return np.swapaxes(db, -1, -2)


def librosa_mfcc_batched(waveform: np.ndarray, cfg) -> np.ndarray:
  """`librosa_mfcc` from `librosa_log_mel_batched`, one batched DCT: [N, frames, n_mfcc]."""
  import librosa  # pylint: disable=import-outside-toplevel
  p = FeatureParams.from_config(cfg)
  log_s = np.swapaxes(librosa_log_mel_batched(waveform, p), -1, -2)
  return np.swapaxes(librosa.feature.mfcc(S=log_s, n_mfcc=p.n_mfcc, dct_type=2, norm='ortho'),
                     -1, -2)
