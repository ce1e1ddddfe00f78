"""A small seeded multimodal dataset, generated in memory, with AV-MNIST's keys.

It exists so that training, fusion and the pipeline can be exercised end to end (and in tests)
without preparing AV-MNIST, and so that fusion has something to win: each modality alone can
only narrow the label down to a pair of classes, and the pairs differ between modalities.

- image (uint8 [S, S, 1]): class pairs {0, 1}, {2, 3}, ... share a template (a few Gaussian
  blobs), randomly shifted, scaled and noised per example.
- audio (int16 [T], 8 kHz like AV-MNIST): pairs {1, 2}, {3, 4}, ..., {K-1, 0} share a two-tone
  chord, with per-example frequency jitter, random phases, a randomly placed burst envelope and
  background noise.
- text (int32 [L], optional, byte tokens from `crossmodal.models.text`): a caption naming a
  colour shared by classes l and l + ceil(K/2); with probability `text_noise` the colour is
  replaced by a random one.

So image alone or audio alone is right about half the time (within-pair guessing), both
together identify the class. Templates depend only on `seed` (shared by all splits); the
examples of each split come from their own seeded stream, so splits are disjoint draws.
"""
from __future__ import annotations

import dataclasses
import math
from collections.abc import Mapping
from typing import Any

import ml_collections
import numpy as np

from crossmodal import schema

SPLITS = ('train', 'validation', 'test')
_COLOURS = ('red', 'green', 'blue', 'yellow', 'purple', 'orange', 'pink', 'brown', 'grey',
            'black', 'white', 'cyan', 'magenta', 'olive', 'navy', 'teal')
_FILLERS = ('a', 'the', 'one', 'some', 'this', 'that')
_MIN_TEXT_LENGTH = 2 * max(map(len, _FILLERS)) + max(map(len, _COLOURS)) + 2 + 2
_CHUNK = 512  # examples generated at once (bounds the float64 audio buffer to ~33 MB)


def _text_fits(where: str, v: Mapping[str, Any]) -> str | None:
  """Captions name a colour shared by two classes: enough colours for the classes."""
  if not v['text_length'] or math.ceil(v['num_classes'] / 2) <= len(_COLOURS):
    return None
  return (f'{where}.num_classes={v["num_classes"]}: text captions support at most '
          f'{2 * len(_COLOURS)} classes')


@dataclasses.dataclass(frozen=True)
class SyntheticParams(schema.Options):
  """Sizes and difficulty of the synthetic dataset (`config.data.synthetic`; the defaults
  when the config has none)."""
  num_classes: int = 10
  image_size: int = 28
  audio_length: int = 8000
  sample_rate: int = 8000
  text_length: int = 0  # tokens per caption; 0 = no text modality (AV-MNIST's keys)
  num_train: int = 5000
  num_validation: int = 1000
  num_test: int = 1000
  image_noise: float = 0.4  # std of pixel noise, template peak = 1
  audio_noise: float = 0.7  # std of background noise relative to the chord's peak amplitude
  text_noise: float = 0.2  # probability that a caption names a random colour
  seed: int = 0

  WHERE = 'config.data.synthetic'
  RULES = {
      'num_classes': (lambda v: v >= 3, 'need >= 3 so the image and audio class pairs differ '
                      '(with 2 classes audio would be uninformative)'),
      **{name: schema.POSITIVE_INT for name in (
          'audio_length', 'sample_rate', 'num_train', 'num_validation', 'num_test')},
      'image_size': (schema.int_at_least(8)[0], 'must be >= 8 to hold the blob templates'),
      'text_length': (lambda v: v == 0 or v >= _MIN_TEXT_LENGTH,
                      f'must be 0 (no text) or >= {_MIN_TEXT_LENGTH} (longest caption with '
                      'BOS/EOS)'),
      'image_noise': schema.at_least(0), 'audio_noise': schema.at_least(0),
      'text_noise': schema.PROBABILITY}
  RELATIONS = (_text_fits,)

  @property
  def modalities(self) -> tuple[str, ...]:
    return ('image', 'audio', 'text') if self.text_length else ('image', 'audio')

  def split_size(self, split: str) -> int:
    return getattr(self, f'num_{_check_split(split)}')


def synthetic_config(**overrides) -> ml_collections.ConfigDict:
  """Default synthetic-dataset options (the fields of SyntheticParams) as a ConfigDict."""
  return ml_collections.ConfigDict(dataclasses.asdict(SyntheticParams(**overrides)))


def _check_split(split: str) -> str:
  if split not in SPLITS:
    raise ValueError(f'synthetic: unknown split {split!r}; valid splits: {", ".join(SPLITS)}')
  return split


def image_group(labels: np.ndarray) -> np.ndarray:
  """Classes sharing an image template: {0, 1}, {2, 3}, ..."""
  return np.asarray(labels) // 2


def audio_group(labels: np.ndarray, num_classes: int) -> np.ndarray:
  """Classes sharing an audio chord: {1, 2}, {3, 4}, ..., {K-1, 0} (offset from the images)."""
  return ((np.asarray(labels) + 1) % num_classes) // 2


def text_group(labels: np.ndarray, num_classes: int) -> np.ndarray:
  """Classes sharing a caption colour: {l, l + ceil(K/2)}."""
  return np.asarray(labels) % math.ceil(num_classes / 2)


class _Templates:
  """Per-group prototypes, drawn from `seed` alone so that all splits share them."""

  def __init__(self, p: SyntheticParams):
    rng = np.random.default_rng([p.seed, 0])
    groups = math.ceil(p.num_classes / 2)
    margin = max(3.0, p.image_size / 5)
    self.blob_centres = rng.uniform(margin, p.image_size - 1 - margin, size=(groups, 3, 2))
    self.blob_sigmas = rng.uniform(1.5, 3.0, size=(groups, 3)) * p.image_size / 28
    # Two tones per audio group from a shared log-spaced grid, no tone used twice.
    nyquist = p.sample_rate / 2
    grid = np.geomspace(200.0, 0.85 * nyquist, 2 * groups)
    self.tones = rng.permutation(grid).reshape(groups, 2)
    self.colours = rng.permutation(len(_COLOURS))[:groups]


def _images(p: SyntheticParams, t: _Templates, groups, rng) -> np.ndarray:
  n, s = len(groups), p.image_size
  shift = rng.uniform(-2, 2, size=(n, 1, 2)) * s / 28
  centres = t.blob_centres[groups] + shift  # [n, 3, 2]
  sigmas = t.blob_sigmas[groups]  # [n, 3]
  coords = np.arange(s, dtype=np.float64)
  dy = coords[None, None, :, None] - centres[:, :, 0, None, None]
  dx = coords[None, None, None, :] - centres[:, :, 1, None, None]
  blobs = np.exp(-(dy ** 2 + dx ** 2) / (2 * sigmas[:, :, None, None] ** 2)).sum(axis=1)
  blobs /= blobs.max(axis=(1, 2), keepdims=True)
  image = blobs * rng.uniform(0.7, 1.0, size=(n, 1, 1))
  image += rng.normal(0.0, p.image_noise, size=image.shape)
  return np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)[..., None]


def _audio(p: SyntheticParams, t: _Templates, groups, rng) -> np.ndarray:
  n, length = len(groups), p.audio_length
  time = np.arange(length) / p.sample_rate
  freqs = t.tones[groups] * rng.uniform(0.97, 1.03, size=(n, 2))
  phases = rng.uniform(0, 2 * np.pi, size=(n, 2))
  chord = np.sin(2 * np.pi * freqs[:, :, None] * time[None, None, :] + phases[:, :, None])
  chord = chord[:, 0] + 0.6 * chord[:, 1]
  duration = rng.uniform(0.4, 0.8, size=(n, 1)) * length
  onset = rng.uniform(0, 1, size=(n, 1)) * (length - duration)
  pos = np.clip((np.arange(length)[None, :] - onset) / duration, 0.0, 1.0)
  envelope = np.sin(np.pi * pos) ** 2  # a smooth burst, zero outside [onset, onset + duration)
  amplitude = rng.uniform(0.15, 0.3, size=(n, 1))
  wave = amplitude * (envelope * chord / 1.6 + p.audio_noise * rng.normal(size=(n, length)))
  return np.round(np.clip(wave, -1.0, 32767 / 32768) * 32768).astype(np.int16)


def _text(p: SyntheticParams, t: _Templates, labels, rng) -> np.ndarray:
  from crossmodal.models import text as text_lib  # pylint: disable=import-outside-toplevel
  groups = text_group(labels, p.num_classes)
  corrupt = rng.random(len(labels)) < p.text_noise
  groups = np.where(corrupt, rng.integers(0, len(t.colours), len(labels)), groups)
  fillers = rng.integers(0, len(_FILLERS), size=(len(labels), 2))
  captions = [f'{_FILLERS[a]} {_COLOURS[t.colours[g]]} {_FILLERS[b]}'
              for g, (a, b) in zip(groups, fillers)]
  return text_lib.encode(captions, p.text_length)


class SyntheticSource:
  """Random-access source (len / getitem) over one split; examples are dicts of numpy arrays.

  Pickles as its parameters and is regenerated in the receiving process (grain workers), which
  is deterministic and cheaper than shipping the arrays.
  """

  def __init__(self, split: str = 'train', config=None):
    self.split = _check_split(split)
    self.params = p = SyntheticParams.from_config(config)
    templates = _Templates(p)
    rng = np.random.default_rng([p.seed, 1 + SPLITS.index(split)])
    n = p.split_size(split)
    self.labels = rng.permutation(np.arange(n) % p.num_classes).astype(np.int64)
    images, audio = [], []
    for start in range(0, n, _CHUNK):
      labels = self.labels[start:start + _CHUNK]
      images.append(_images(p, templates, image_group(labels), rng))
      audio.append(_audio(p, templates, audio_group(labels, p.num_classes), rng))
    self.arrays = {'image': np.concatenate(images), 'audio': np.concatenate(audio),
                   'label': self.labels}
    if p.text_length:
      self.arrays['text'] = _text(p, templates, self.labels, rng)
    for array in self.arrays.values():
      array.setflags(write=False)

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, index: int) -> dict[str, np.ndarray]:
    if not isinstance(index, (int, np.integer)):
      raise TypeError(f'SyntheticSource index must be an int, got {type(index).__name__}')
    if not -len(self) <= index < len(self):
      raise IndexError(f'SyntheticSource({self.split!r}) index {index} out of range '
                       f'[0, {len(self)})')
    return {key: value[index] for key, value in self.arrays.items()}

  def __reduce__(self):
    return (SyntheticSource, (self.split, self.params))

  def __repr__(self) -> str:
    return f'SyntheticSource(split={self.split!r}, num_examples={len(self)}, {self.params})'


def get_data_source(split: str, config=None) -> SyntheticSource:
  """The synthetic split as a random-access source (same role as avmnist.get_data_source)."""
  return SyntheticSource(split, config)
