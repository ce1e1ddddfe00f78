"""Grain input pipeline: per-process shard, shuffle, batch, pad, with an integer position.

Why grain and not tf.data: our sources are random-access (`tfds.data_source` over array_record,
or in-memory arrays), and grain's `MapDataset` is random access all the way through -- batch k
of the pipeline is a pure function of (source, seed, k). That gives determinism independent of
thread/worker scheduling, exact resumption from one integer, per-epoch reshuffles without a
shuffle buffer, and no TensorFlow runtime in the training process.

Layout of the stream (index arithmetic on source indices, nothing materialised):
  range(len(source)) -> global shuffle (grain reseeds it every epoch) -> repeat(num_epochs)
  -> trim (drop_remainder) or pad (eval) to a multiple of global_batch_size -> this process's
  block of every global batch -> batch(local_batch_size) -> read, `transform` and stack that
  batch's examples (+ `mask`) in place into preallocated arrays. Stacking fresh per-example
  copies (`np.stack`) made a cached AV-MNIST batch of 256 cost 17-18 ms of CPU; written in
  place it costs 8.5 ms (docs/performance.md).
Batching after repeat means a training batch may span an epoch boundary: no example is dropped
or repeated within an epoch, and only the end of a finite run can be short.
Global batch k is stream elements [k*G, (k+1)*G); process p reads rows [p*b, (p+1)*b) of it
(b = G / process_count) and nothing else. Stacking the processes' batches in process order
(as `jax.make_array_from_process_local_data` does) therefore reproduces the one-process batch
exactly, so results do not depend on the number of hosts, and a run may resume on a different
host count with the same global batch size. Every process sees the same number of batches,
which keeps collectives in lockstep during evaluation.

Position: the number of batches the caller has taken (`Pipeline.position`), a plain integer
saved with the checkpoint; `make_pipeline(..., start_index=k)` yields batch k onwards. We use
it instead of grain's iterator state because it is the same information (grain's state for this
pipeline is a next-index), it is independent of prefetch depth and worker count (which may
change between runs), it fits a JSON checkpoint item, and prefetched-but-unconsumed batches
are never counted.

Batches are dicts of numpy arrays per docs/architecture.md (`image` uint8, `audio` float32 in
[-1, 1], `text` int32, `label` int32, and `present` bool [3] for data whose rows may lack a
modality: which of models.encoders.MODALITIES each example has); provenance and string fields
are dropped. Pipelines made
with drop_remainder=False also carry `mask` (bool [b]): False marks padding rows, which repeat
a zeroed example so that the last batch keeps the fixed shape and the jitted eval step does not
recompile.

Prefetching: `prefetch_threads` threads build whole batches ahead (enough for in-memory and
array_record sources). `worker_count > 0` adds grain worker processes (`mp_prefetch`); worker w
builds batches w, w + W, ... and grain returns them in order, so output is unchanged. Worker
processes need picklable sources/transforms defined at module level and, in scripts, code
under `if __name__ == '__main__':` (grain's documented requirement for worker processes).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Mapping
from typing import Any

import grain
import numpy as np

Example = dict[str, np.ndarray]
BATCH_KEYS = ('image', 'audio', 'text', 'label', 'present')
MASK_KEY = 'mask'


def to_model_example(example: Mapping[str, Any]) -> Example:
  """Converts a source example to the batch dtypes; drops keys the model does not read.

  `audio` int16 (or int32) PCM becomes float32 in [-1, 1]; float audio is kept as float32.
  """
  out = {}
  for key in BATCH_KEYS:
    if key not in example:
      continue
    value = np.asarray(example[key])
    if key == 'image':
      if value.dtype != np.uint8:
        raise TypeError(f'input_pipeline: image must be uint8, got {value.dtype}')
      out[key] = value
    elif key == 'audio':
      if value.dtype in (np.int16, np.int32):
        out[key] = (value.astype(np.float32) / (np.iinfo(value.dtype).max + 1.0)).astype(
            np.float32)
      elif np.issubdtype(value.dtype, np.floating):
        out[key] = value.astype(np.float32)
      else:
        raise TypeError(f'input_pipeline: audio must be int16/int32 PCM or float, got '
                        f'{value.dtype}')
    elif key == 'present':  # bool [3], models.encoders.MODALITIES order (manifest data)
      out[key] = value.astype(bool)
    else:  # text, label
      if not np.issubdtype(value.dtype, np.integer):
        raise TypeError(f'input_pipeline: {key} must be integer ids, got {value.dtype}'
                        + (' (tokenise text with crossmodal.models.text.encode in a transform)'
                           if key == 'text' else ''))
      out[key] = value.astype(np.int32)
  if not out:
    raise KeyError(f'input_pipeline: example has none of the keys {list(BATCH_KEYS)}; got '
                   f'{sorted(example)}')
  return out


class _BuildBatch:
  """Source indices -> one batch: reads and transforms each example into preallocated arrays.

  The stream before batching carries only source indices; examples are read here, per batch,
  and written in place (see the module docstring for what that saves). Index -1 is a padding
  row: the zeroed first example, with `mask` False. Module-level and picklable, for grain
  worker processes.
  """

  def __init__(self, source, transform: Callable[[Mapping[str, Any]], Example], with_mask: bool):
    self.source, self.transform, self.with_mask = source, transform, with_mask
    self._padding = None

  def example(self, index: int) -> Example:
    out = self.transform(self.source[index])
    if MASK_KEY in out:
      raise KeyError(f'input_pipeline: transform output already has a {MASK_KEY!r} key')
    return out

  def __call__(self, indices) -> Example:
    indices = np.asarray(indices)
    real = indices >= 0
    batch = None
    for row, (index, ok) in enumerate(zip(indices.tolist(), real.tolist())):
      example = self.example(index) if ok else self._pad()
      if batch is None:  # written in place: stacking fresh per-example copies cost 3x more
        batch = {k: np.empty((len(indices),) + np.shape(v), np.asarray(v).dtype)
                 for k, v in example.items()}
      for key, value in example.items():
        value = np.asarray(value)
        if key not in batch or value.shape != batch[key].shape[1:] or (
            value.dtype != batch[key].dtype):
          expected = {k: (v.shape[1:], str(v.dtype)) for k, v in batch.items()}
          raise ValueError(f'input_pipeline: example {index} does not match the batch: '
                           f'{key!r} is {value.shape} {value.dtype}, expected {expected}')
        batch[key][row] = value
      if len(example) != len(batch):
        raise ValueError(f'input_pipeline: example {index} has keys {sorted(example)}, the '
                         f'batch has {sorted(batch)}')
    if self.with_mask:
      batch[MASK_KEY] = real
    return batch

  def _pad(self) -> Example:
    if self._padding is None:
      self._padding = {k: np.zeros_like(v) for k, v in self.example(0).items()}
    return self._padding


class _IndexMap(grain.MapDataset):
  """A MapDataset of `self._length` elements whose element i is `self._element(i)`."""
  _length = 0

  def __len__(self) -> int:
    return self._length

  def _element(self, index: int) -> Any:
    raise NotImplementedError

  def __getitem__(self, index):
    if isinstance(index, slice):
      return self.slice(index)
    return self._element(index)


class _PadToLength(_IndexMap):
  """Extends a finite dataset to `length` elements by repeating `pad` after its end."""

  def __init__(self, parent: grain.MapDataset, length: int, pad: Any):
    super().__init__(parent)
    self._length, self._pad = length, pad

  def __str__(self) -> str:
    return f'PadToLength({self._length})'

  def _element(self, index: int) -> Any:
    index %= self._length
    return self._parent[index] if index < len(self._parent) else self._pad


class _ProcessBlocks(_IndexMap):
  """Process p's rows [p*b, (p+1)*b) of each consecutive group of b*process_count elements."""

  def __init__(self, parent: grain.MapDataset, process_index: int, process_count: int,
               local_batch_size: int):
    super().__init__(parent)
    self._p, self._b = process_index, local_batch_size
    self._global = local_batch_size * process_count
    self._length = len(parent) // self._global * local_batch_size

  def __str__(self) -> str:
    return f'ProcessBlocks(process={self._p}, local_batch={self._b}, global_batch={self._global})'

  def _element(self, index: int) -> Any:
    batch, row = divmod(index, self._b)
    return self._parent[batch * self._global + self._p * self._b + row]


def _shuffle_seed(seed: int) -> int:
  # grain reseeds epoch e with (seed + e); hashing keeps runs with nearby seeds (0, 1, ...)
  # from replaying each other's epochs shifted by one.
  return int(np.random.SeedSequence(seed).generate_state(1)[0])


def _process_layout(process_index, process_count) -> tuple[int, int]:
  if process_index is None or process_count is None:
    import jax  # pylint: disable=import-outside-toplevel  (only when not given explicitly)
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
  if process_count < 1 or not 0 <= process_index < process_count:
    raise ValueError(f'input_pipeline: need 0 <= process_index < process_count, got '
                     f'process_index={process_index}, process_count={process_count}')
  return int(process_index), int(process_count)


class Pipeline:
  """Iterator over this process's batches; `position` counts the batches already taken."""

  def __init__(self, batches: grain.MapDataset, *, start_index: int, finite: bool,
               read_options: grain.ReadOptions, worker_count: int):
    self._batches = batches
    self._finite = finite
    self._read_options = read_options
    self._worker_count = worker_count
    self._position = start_index
    self._iterator = None

  @property
  def position(self) -> int:
    """Batches produced so far (including the `start_index` skipped); save this to resume."""
    return self._position

  @property
  def num_batches(self) -> int | None:
    """Total batches of a finite pipeline (from index 0), None when infinite."""
    return len(self._batches) if self._finite else None

  def __len__(self) -> int:
    """Batches still to come."""
    if not self._finite:
      raise TypeError('input_pipeline: an infinite pipeline (num_epochs=None) has no length')
    return len(self._batches) - self._position

  def batch(self, index: int) -> Example:
    """Batch `index` by random access (does not move the position)."""
    if self._finite and not 0 <= index < len(self._batches):
      raise IndexError(f'input_pipeline: batch {index} out of range [0, {len(self._batches)})')
    return self._batches[index]

  def __iter__(self) -> Pipeline:
    return self

  def __next__(self) -> Example:
    if self._iterator is None:
      dataset = self._batches[self._position:].to_iter_dataset(self._read_options)
      if self._worker_count > 0:
        from absl import flags  # pylint: disable=import-outside-toplevel
        if not flags.FLAGS.is_parsed():  # grain workers read absl flags
          flags.FLAGS.mark_as_parsed()
        dataset = dataset.mp_prefetch(
            grain.MultiprocessingOptions(num_workers=self._worker_count))
      self._iterator = iter(dataset)
    batch = next(self._iterator)
    self._position += 1
    return batch

  def close(self) -> None:
    """Stops prefetch threads / worker processes."""
    if self._iterator is not None and hasattr(self._iterator, 'close'):
      self._iterator.close()
    self._iterator = None


def make_pipeline(source, *, global_batch_size: int, seed: int, shuffle: bool = True,
                  drop_remainder: bool = True, process_index: int | None = None,
                  process_count: int | None = None, num_epochs: int | None = None,
                  start_index: int = 0, worker_count: int = 0,
                  transform: Callable[[Mapping[str, Any]], Example] = to_model_example,
                  prefetch_threads: int = 2, prefetch_batches: int = 4) -> Pipeline:
  """Batches of `source` for this process (see the module docstring for the exact layout).

  Args:
    source: random-access source (`__len__`, `__getitem__` -> dict), e.g. a tfds.data_source.
    global_batch_size: examples per step over all processes; must divide by process_count.
    seed: shuffle seed (each epoch is reshuffled deterministically from it).
    shuffle: global shuffle; False reads the source in order (evaluation).
    drop_remainder: True drops the last incomplete global batch; False pads it and adds `mask`.
    process_index, process_count: this process's shard; default jax.process_index()/count().
    num_epochs: passes over the source; None repeats forever (training).
    start_index: first batch to produce (the saved `Pipeline.position` when resuming).
    worker_count: grain worker processes (0 = threads only).
    transform: example -> dict of numpy arrays; the default converts to the batch contract.
    prefetch_threads, prefetch_batches: in-process batch prefetching.
  """
  process_index, process_count = _process_layout(process_index, process_count)
  if not isinstance(global_batch_size, (int, np.integer)) or global_batch_size < 1:
    raise ValueError(f'input_pipeline: global_batch_size must be a positive integer, got '
                     f'{global_batch_size!r}')
  if global_batch_size % process_count:
    raise ValueError(f'input_pipeline: global_batch_size={global_batch_size} is not divisible '
                     f'by process_count={process_count}')
  if num_epochs is not None and num_epochs < 1:
    raise ValueError(f'input_pipeline: num_epochs must be None (repeat forever) or >= 1, got '
                     f'{num_epochs}')
  if not isinstance(seed, (int, np.integer)) or seed < 0:
    raise ValueError(f'input_pipeline: seed must be a non-negative integer, got {seed!r}')
  if start_index < 0:
    raise ValueError(f'input_pipeline: start_index must be >= 0, got {start_index}')
  if worker_count < 0:
    raise ValueError(f'input_pipeline: worker_count must be >= 0, got {worker_count}')
  size = len(source)
  if size == 0:
    raise ValueError(f'input_pipeline: source {source!r} is empty')
  local_batch_size = global_batch_size // process_count

  stream = grain.MapDataset.range(size)  # source indices; examples are read per batch
  if shuffle:
    stream = stream.shuffle(seed=_shuffle_seed(seed))
  stream = stream.repeat(num_epochs)
  finite = num_epochs is not None
  if finite:
    total = len(stream)
    if drop_remainder:
      if total < global_batch_size:
        raise ValueError(f'input_pipeline: {total} examples ({size} x {num_epochs} epochs) '
                         f'make no full batch of global_batch_size={global_batch_size} with '
                         'drop_remainder=True')
      stream = stream[:total - total % global_batch_size]
    else:
      padded = math.ceil(total / global_batch_size) * global_batch_size
      stream = _PadToLength(stream, padded, -1)
  batches = _ProcessBlocks(stream, process_index, process_count, local_batch_size)
  batches = batches.batch(local_batch_size, drop_remainder=True)
  batches = batches.map(_BuildBatch(source, transform, with_mask=not drop_remainder))
  if finite and start_index > len(batches):
    raise ValueError(f'input_pipeline: start_index={start_index} is past the end of this '
                     f'pipeline ({len(batches)} batches)')
  read_options = grain.ReadOptions(num_threads=prefetch_threads,
                                   prefetch_buffer_size=prefetch_batches)
  return Pipeline(batches, start_index=start_index, finite=finite, read_options=read_options,
                  worker_count=worker_count)

