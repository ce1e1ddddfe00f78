"""One entry point from `config.data` to a random-access source and its metadata.

Training and evaluation call `get_source(config.data, split)` and `dataset_info(config.data)`
and never name a dataset module, so adding a dataset is one entry in `_DATASETS`. Dataset
modules are imported lazily: the AV-MNIST builder pulls in tensorflow_datasets, which runs on
synthetic data do not need.

Config fields read: `name`; for 'avmnist' `builder_config` (default 'pca'), `data_dir`,
`manual_dir`; for 'emoji' the same three (default 'held_out_twitter') and `label`,
`text_fields`, `text_length`, `lowercase`, `image_size` (emoji.ModelExamples); for 'synthetic'
the optional sub-config `synthetic` (fields of `synthetic.SyntheticParams`, defaults when
absent).
"""
from __future__ import annotations

import dataclasses
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from crossmodal import schema

AVMNIST_MODALITIES = ('image', 'audio')
EMOJI_MODALITIES = ('image', 'text')
WHERE = 'config.data'
# config.data: the options of every dataset and each dataset's own, with the defaults used
# when a config leaves one out (check_options is their schema).
COMMON_OPTIONS = {'name': '', 'global_batch_size': 64, 'eval_batch_size': 256,
                  'worker_count': 0, 'cache': False}
OPTIONS = {
    'avmnist': {'builder_config': 'pca', 'data_dir': None, 'manual_dir': None},
    'emoji': {'builder_config': 'held_out_twitter', 'data_dir': None, 'manual_dir': None,
              'label': 'category', 'text_fields': ('name',), 'text_length': 64,
              'lowercase': True, 'image_size': 64},
    'synthetic': {'synthetic': None},  # fields of synthetic.SyntheticParams; None: defaults
    # crossmodal/data/manifest.py: all but text_length / lowercase shape the prepared bytes.
    'manifest': {'path': '', 'modalities': (), 'missing_ok': (), 'image_size': 64,
                 'image_channels': 3, 'sample_rate': 16000, 'clip_seconds': 1.0,
                 'resample': True, 'mono': True, 'classes': '',
                 'split_fractions': (0.8, 0.1, 0.1), 'split_seed': 0, 'on_error': 'raise',
                 'text_length': 64, 'lowercase': False, 'data_dir': None},
}
# config.data.<option> -> manifest.manifest_config's argument of the same name.
_MANIFEST_BUILD = ('modalities', 'missing_ok', 'image_size', 'image_channels', 'sample_rate',
                   'clip_seconds', 'resample', 'mono', 'classes', 'split_fractions',
                   'split_seed', 'on_error')


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the model and the loop need to know before reading any data."""
  name: str
  num_classes: int
  modalities: tuple[str, ...]
  split_sizes: Mapping[str, int]
  class_names: tuple[str, ...] = ()  # what zero-shot classification embeds; () if unnamed


def _get(data_config, key: str, default: Any = None) -> Any:
  return data_config.get(key, default) if hasattr(data_config, 'get') else getattr(
      data_config, key, default)


def option(data_config, key: str) -> Any:
  """`config.data.<key>`, or its default (OPTIONS) when the config leaves it out."""
  defaults = {**COMMON_OPTIONS, **OPTIONS.get(_get(data_config, 'name'), {})}
  return _get(data_config, key, defaults[key])


def _avmnist_source(data_config, split: str):
  from crossmodal.data import avmnist  # pylint: disable=import-outside-toplevel
  return avmnist.get_data_source(split, config=option(data_config, 'builder_config'),
                                 data_dir=_get(data_config, 'data_dir'),
                                 manual_dir=_get(data_config, 'manual_dir'))


def _avmnist_info(data_config) -> DatasetInfo:
  # The prepared dataset_info.json holds the split sizes (subset builds are smaller), so
  # nothing is read from the records; get_source prepares the dataset on first use.
  from crossmodal.data import avmnist  # pylint: disable=import-outside-toplevel
  builder_config = option(data_config, 'builder_config')
  data_dir = _get(data_config, 'data_dir')
  builder = avmnist.get_builder(builder_config, data_dir=data_dir)
  splits = {name: info.num_examples for name, info in builder.info.splits.items()}
  if not splits:
    raise FileNotFoundError(
        f'avmnist/{builder.builder_config.name} is not prepared in data_dir={data_dir!r} '
        '(config.data.data_dir): open a split with get_source first or run '
        'scripts/prepare_data.py')
  num_classes = builder.info.features['label'].num_classes
  return DatasetInfo('avmnist', num_classes, AVMNIST_MODALITIES, splits,
                     tuple(builder.info.features['label'].names))


def _emoji_options(data_config) -> dict[str, Any]:
  return dict(label=option(data_config, 'label'),
              text_fields=tuple(option(data_config, 'text_fields')),
              text_length=int(option(data_config, 'text_length')),
              lowercase=bool(option(data_config, 'lowercase')),
              image_size=int(option(data_config, 'image_size')))


def _emoji_source(data_config, split: str):
  from crossmodal.data import emoji  # pylint: disable=import-outside-toplevel
  source = emoji.get_data_source(split, config=_get(data_config, 'builder_config',
                                                    'held_out_twitter'),
                                 data_dir=_get(data_config, 'data_dir'),
                                 manual_dir=_get(data_config, 'manual_dir'))
  return emoji.ModelExamples(source, **_emoji_options(data_config))


def _emoji_info(data_config) -> DatasetInfo:
  from crossmodal.data import emoji  # pylint: disable=import-outside-toplevel
  builder = emoji.get_builder(option(data_config, 'builder_config'),
                              data_dir=_get(data_config, 'data_dir'))
  splits = {name: info.num_examples for name, info in builder.info.splits.items()}
  if not splits:
    raise FileNotFoundError(
        f'emoji/{builder.builder_config.name} is not prepared in data_dir='
        f'{_get(data_config, "data_dir")!r}: open a split with get_source first')
  names = builder.info.features[_emoji_options(data_config)['label']].names
  return DatasetInfo('emoji', len(names), EMOJI_MODALITIES, splits, tuple(names))


def check_class_name_text(data_config) -> None:
  """ValueError unless the dataset both captions its examples and names its classes (what
  zero-shot classification compares): checked before training, not after it."""
  if _get(data_config, 'name') != 'emoji':
    raise ValueError(f'config.data.name={_get(data_config, "name")!r}: zero-shot '
                     'classification needs captioned examples and named classes, which only '
                     'emoji has')


def class_name_tokens(data_config, names: Sequence[str]) -> Any:
  """Texts (e.g. class names) as the dataset's text ids [len(names), L], tokenised exactly
  as its captions are (zero-shot classification compares the two)."""
  check_class_name_text(data_config)
  from crossmodal.data import emoji  # pylint: disable=import-outside-toplevel
  return emoji.ModelExamples([], **_emoji_options(data_config)).encode(list(names))


def _synthetic_source(data_config, split: str):
  from crossmodal.data import synthetic  # pylint: disable=import-outside-toplevel
  return synthetic.get_data_source(split, _get(data_config, 'synthetic'))


def _synthetic_info(data_config) -> DatasetInfo:
  from crossmodal.data import synthetic  # pylint: disable=import-outside-toplevel
  p = synthetic.SyntheticParams.from_config(_get(data_config, 'synthetic'))
  return DatasetInfo('synthetic', p.num_classes, p.modalities,
                     {split: p.split_size(split) for split in synthetic.SPLITS})


def manifest_config(data_config):
  """The ManifestConfig of `config.data` (reads the manifest's header and bytes)."""
  from crossmodal.data import manifest  # pylint: disable=import-outside-toplevel
  path = option(data_config, 'path')
  if not path:
    raise schema.ConfigError(f"{WHERE}.path is empty: give the manifest, e.g. "
                             "--config=experiments/manifest.py:path=/data/pairs.csv")
  kwargs = {k: option(data_config, k) for k in _MANIFEST_BUILD}
  kwargs['classes'] = kwargs['classes'] or ()
  return manifest.manifest_config(path, **kwargs)


def _manifest_builder(data_config):
  from crossmodal.data import manifest  # pylint: disable=import-outside-toplevel
  return manifest.prepare(manifest_config(data_config), data_dir=_get(data_config, 'data_dir'))


def _manifest_source(data_config, split: str):
  from crossmodal.data import manifest  # pylint: disable=import-outside-toplevel
  builder = _manifest_builder(data_config)
  cfg = builder.builder_config
  return manifest.ModelExamples(builder.as_data_source(split=split), cfg.modalities,
                                text_length=int(option(data_config, 'text_length')),
                                lowercase=bool(option(data_config, 'lowercase')),
                                with_present=bool(cfg.missing_ok))


def _manifest_info(data_config) -> DatasetInfo:
  builder = _manifest_builder(data_config)
  classes = tuple(builder.info.metadata['classes'])
  splits = {name: info.num_examples for name, info in builder.info.splits.items()}
  return DatasetInfo('manifest', len(classes), builder.builder_config.modalities, splits,
                     classes)


_DATASETS: dict[str, tuple[Callable[[Any, str], Any], Callable[[Any], DatasetInfo]]] = {
    'avmnist': (_avmnist_source, _avmnist_info),
    'emoji': (_emoji_source, _emoji_info),
    'synthetic': (_synthetic_source, _synthetic_info),
    'manifest': (_manifest_source, _manifest_info),
}
DATASET_NAMES = tuple(_DATASETS)


def _lookup(data_config):
  name = _get(data_config, 'name')
  if name not in _DATASETS:
    raise schema.ConfigError(f'{WHERE}.name={name!r} is not a known dataset; valid names: '
                             f'{", ".join(DATASET_NAMES)}')
  return _DATASETS[name]


def check_options(data_config, device_count: int | None = None,
                  process_count: int | None = None) -> None:
  """ConfigError naming every bad option of `config.data` (unknown, wrong type, out of range;
  the synthetic sub-config too). With the global `device_count` / `process_count`, batch
  sizes must split evenly over them. Reads no data and imports no dataset module."""
  _lookup(data_config)
  values = schema.as_dict(data_config)

  def batches_split(where, v):
    for key in ('global_batch_size', 'eval_batch_size'):
      for n, what in ((device_count, 'device count'), (process_count, 'process count')):
        if n and v[key] % n:
          yield (f'{where}.{key}={v[key]} must be divisible by the {what} ({n}); e.g. '
                 f'{max(n, v[key] // n * n)}')

  def cache_alone(where, v):
    if v['cache'] and v['worker_count']:
      return (f'{where}.cache=True with {where}.worker_count={v["worker_count"]}: every worker '
              'process would hold its own copy of the dataset; use one of them')
    return None

  schema.check(WHERE, values, {**COMMON_OPTIONS, **OPTIONS[values['name']]},
               required=('name', 'global_batch_size', 'eval_batch_size'),
               rules={'global_batch_size': schema.POSITIVE_INT,
                      'eval_batch_size': schema.POSITIVE_INT,
                      'worker_count': schema.int_at_least(0)},
               relations=(batches_split, cache_alone))
  if values.get('synthetic') is not None:
    from crossmodal.data import synthetic  # pylint: disable=import-outside-toplevel
    synthetic.SyntheticParams.check(values['synthetic'])


def check_config(data_config) -> tuple[str, ...]:
  """The dataset's modalities; ValueError for an unknown dataset or variant. Reads no data."""
  _lookup(data_config)
  if _get(data_config, 'name') == 'avmnist':
    from crossmodal.data import avmnist  # pylint: disable=import-outside-toplevel
    avmnist.resolve_config(option(data_config, 'builder_config'))
    return AVMNIST_MODALITIES
  if _get(data_config, 'name') == 'emoji':
    from crossmodal.data import emoji  # pylint: disable=import-outside-toplevel
    emoji.resolve_config(option(data_config, 'builder_config'))
    emoji.check_options(**{k: v for k, v in _emoji_options(data_config).items()
                           if k != 'lowercase'})
    return EMOJI_MODALITIES
  if _get(data_config, 'name') == 'manifest':
    return manifest_config(data_config).modalities
  return _synthetic_info(data_config).modalities


class MemoryCache:
  """A random-access source that keeps every example it has decoded (`config.data.cache`).

  Decoding an AV-MNIST record (array_record read, TFDS deserialisation, zlib) takes CPU that
  on a small host competes with the training step for the same cores (the benchmark's pipeline
  section measures both; docs/performance.md); after the first epoch a cached source costs
  nothing but memory (AV-MNIST train: 55,000 x 16.8 kB, about 0.9 GB). Concurrent readers may
  decode an example twice; both copies are equal, so that race is harmless.
  """

  def __init__(self, source):
    self._source = source
    self._examples: list[Any] = [None] * len(source)

  def __len__(self) -> int:
    return len(self._examples)

  def __getitem__(self, index: int):
    example = self._examples[index]
    if example is None:
      example = self._examples[index] = self._source[index]
    return example

  def __repr__(self) -> str:
    return f'MemoryCache({self._source!r})'


def get_source(data_config, split: str):
  """Random-access source (`len`, `[i]` -> dict of numpy arrays) for `split`; decoded
  examples are kept in memory when `config.data.cache` is True."""
  source = _lookup(data_config)[0](data_config, split)
  return MemoryCache(source) if option(data_config, 'cache') else source


def dataset_info(data_config) -> DatasetInfo:
  """Number of classes, available modalities and split sizes of the configured dataset."""
  return _lookup(data_config)[1](data_config)


def fingerprint(data_config) -> dict[str, str] | None:
  """The prepared dataset's content fingerprint as recorded when it was prepared
  (crossmodal/data/fingerprint.py): {split: sha256, 'all': sha256}. None for synthetic data
  and for copies prepared before fingerprints were recorded (scripts/prepare_data.py --verify
  computes theirs)."""
  from crossmodal.data import fingerprint as fingerprint_lib  # pylint: disable=import-outside-toplevel
  name = _get(data_config, 'name')
  if name == 'manifest':
    return fingerprint_lib.recorded(_manifest_builder(data_config))
  if name in ('avmnist', 'emoji'):
    module = __import__(f'crossmodal.data.{name}', fromlist=[name])
    builder = module.get_builder(option(data_config, 'builder_config'),
                                 data_dir=_get(data_config, 'data_dir'))
    return fingerprint_lib.recorded(builder) if builder.is_prepared() else None
  return None


def _internet_available(host: str = 'storage.googleapis.com', timeout: float = 5.0) -> bool:
  import socket  # pylint: disable=import-outside-toplevel
  try:
    socket.create_connection((host, 443), timeout=timeout).close()
    return True
  except OSError:
    return False


def check_available(data_config) -> None:
  """sources.SourceError when AV-MNIST is neither prepared, nor available locally, nor
  downloadable: without this, TFDS would retry the download for minutes before failing."""
  if _get(data_config, 'name') != 'avmnist':
    return
  from crossmodal.data import avmnist  # pylint: disable=import-outside-toplevel
  from crossmodal.data import sources  # pylint: disable=import-outside-toplevel
  builder_config = option(data_config, 'builder_config')
  builder = avmnist.get_builder(builder_config, data_dir=_get(data_config, 'data_dir'))
  if builder.is_prepared():
    return
  if (sources.resolve_manual_dir(_get(data_config, 'manual_dir')) is None
      and not _internet_available()):
    raise sources.SourceError(
        f'AV-MNIST ({builder_config}) is not prepared in {builder.data_dir}, no source '
        'directory was found and there is no internet.')
