"""Corruptions of one modality of host batches, for the robustness evaluator.

Each noise is a function of a level in [0, 1]: 0 leaves the input unchanged and 1 is its
strongest form, which destroys (or nearly destroys) the modality's information for every kind
but rotation (a 180-degree turn: upside-down digits, information kept), so curves of different
noises share an axis.

  image (uint8 pixels)
    gaussian     additive N(0, (level * 255)^2), clipped to 0..255
    salt_pepper  a share `level` of the pixels set to 0 or 255 at random
    rotation     rotated by +-level * 180 degrees (random sign), bilinear, zero fill
    contrast     pixels pulled towards the image mean by a factor 1 - level
  audio (float waveforms)
    gaussian     additive N(0, (level * 4 * clip RMS)^2) (level 1: about -12 dB SNR on top of
                 the dataset's own noise)
    dropout      a share `level` of the samples set to 0 at random

Randomness comes from (seed, batch index), so a noisy pass over a split is reproducible.
"""
from __future__ import annotations

from typing import Callable

import numpy as np
from scipy import ndimage

NOISES = {'image': ('gaussian', 'salt_pepper', 'rotation', 'contrast'),
          'audio': ('gaussian', 'dropout')}


def _image_gaussian(x, level, rng):
  return np.clip(x + rng.normal(0.0, level * 255.0, x.shape), 0, 255)


def _image_salt_pepper(x, level, rng):
  hit = rng.random(x.shape) < level
  return np.where(hit, 255.0 * (rng.random(x.shape) < 0.5), x)


def _image_rotation(x, level, rng):
  angles = level * 180.0 * rng.choice([-1.0, 1.0], size=len(x))
  return np.stack([ndimage.rotate(img, angle, axes=(0, 1), reshape=False, order=1,
                                  mode='constant', cval=0.0) for img, angle in zip(x, angles)])


def _image_contrast(x, level, rng):
  del rng
  mean = x.mean(axis=tuple(range(1, x.ndim)), keepdims=True)
  return mean + (x - mean) * (1.0 - level)


def _audio_gaussian(x, level, rng):
  rms = np.sqrt(np.mean(x ** 2, axis=-1, keepdims=True))
  return x + rng.normal(size=x.shape) * (level * 4.0 * rms)


def _audio_dropout(x, level, rng):
  return np.where(rng.random(x.shape) < level, 0.0, x)


_FUNCTIONS = {
    ('image', 'gaussian'): _image_gaussian,
    ('image', 'salt_pepper'): _image_salt_pepper,
    ('image', 'rotation'): _image_rotation,
    ('image', 'contrast'): _image_contrast,
    ('audio', 'gaussian'): _audio_gaussian,
    ('audio', 'dropout'): _audio_dropout,
}


def _check(modality: str, kind: str, level: float) -> None:
  if (modality, kind) not in _FUNCTIONS:
    raise ValueError(f'noise {kind!r} for {modality!r}: valid choices: '
                     f'{NOISES.get(modality, ())}')
  if not 0.0 <= level <= 1.0:
    raise ValueError(f'noise level {level} must be in [0, 1]')


def corrupt(x: np.ndarray, modality: str, kind: str, level: float,
            rng: np.random.Generator) -> np.ndarray:
  """`x` [B, ...] with noise `kind` at `level`, in x's dtype (uint8 images are rounded)."""
  _check(modality, kind, level)
  out = _FUNCTIONS[(modality, kind)](np.asarray(x, np.float64), level, rng)
  if x.dtype == np.uint8:
    return np.rint(np.clip(out, 0, 255)).astype(np.uint8)
  return out.astype(x.dtype)


def make_transform(modality: str, kind: str, level: float,
                   seed: int = 0) -> Callable[[dict, int], dict]:
  """transform(batch, batch_index) -> a copy of `batch` with `modality` corrupted."""
  _check(modality, kind, level)  # now, not in the middle of a pass

  def transform(batch: dict, batch_index: int) -> dict:
    rng = np.random.default_rng([seed, batch_index])
    return {**batch, modality: corrupt(batch[modality], modality, kind, level, rng)}
  return transform
