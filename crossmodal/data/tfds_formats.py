"""TFDS helpers shared by our builders: both file formats from one prepared directory, one
build when several processes prepare at once, and config names resolved the same way.

Builders write array_record (random access: what `tfds.data_source` and grain read, no
TensorFlow needed) and, when TensorFlow imports, a tfrecord copy of the same serialized
examples, so `tfds.load` works on the same directory.
"""
from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any

import tensorflow_datasets as tfds


def tensorflow_available() -> bool:
  try:
    import tensorflow  # noqa: F401  pylint: disable=g-import-not-at-top,unused-import
  except ImportError:
    return False
  return True


def add_tfrecord_copy(info: tfds.core.DatasetInfo) -> None:
  """Writes each array_record shard again as tfrecord (same serialized examples).

  tfrecord becomes the primary format (what tfds.load / as_dataset read) and array_record
  the alternative that tfds.data_source picks, so both work on one prepared directory.
  TFDS's own converter (tfds convert_format) needs apache_beam, which we do not install.
  """
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  from array_record.python import array_record_module  # pylint: disable=g-import-not-at-top

  for split_info in info.splits.values():
    tf_template = split_info.filename_template.replace(filetype_suffix="tfrecord")
    for src, dst in zip(split_info.filepaths, tf_template.sharded_filepaths(split_info.num_shards)):
      reader = array_record_module.ArrayRecordReader(os.fspath(src))
      try:
        records = reader.read_all()
      finally:
        reader.close()
      with tf.io.TFRecordWriter(os.fspath(dst)) as writer:
        for record in records:
          writer.write(record)
  info.set_file_format("tfrecord", override=True, override_if_initialized=True)
  info.add_alternative_file_format("array_record")


def restore_alternative_formats(info: tfds.core.DatasetInfo) -> None:
  """Works around TFDS 4.9.10: a builder restored from disk keeps `alternativeFileFormats`
  only in its proto, so `available_file_formats()` misses the array_record copy and
  `as_data_source` refuses a dataset whose primary format is tfrecord."""
  known = info.alternative_file_formats  # the live list behind available_file_formats()
  for value in info.as_proto.alternative_file_formats:
    fmt = tfds.core.FileFormat(value)
    if fmt not in known:
      known.append(fmt)


class PreparedDataSource:
  """Builder mixin: `as_data_source` as TFDS's, with a clear error when the dataset is not
  prepared (`how_to_prepare` says what to do), and the alternative file formats re-registered
  from disk first (restore_alternative_formats)."""

  def how_to_prepare(self) -> str:
    raise NotImplementedError

  def as_data_source(self, *args, **kwargs):
    if not self.is_prepared():
      raise FileNotFoundError(f'{self.name}/{self.builder_config.name} is not prepared in '
                              f'{self.data_dir_root}. {self.how_to_prepare()}')
    restore_alternative_formats(self.info)
    return super().as_data_source(*args, **kwargs)


def prepare_once(make_builder, manual_dir=None):
  """Prepares `make_builder()`'s dataset unless it is on disk, and returns a builder.

  Two processes may build the same dataset at once (a parallel sweep, several hosts sharing a
  data_dir): TFDS writes into a private incomplete.* directory and renames it at the end, so the
  second rename fails. The data the first process wrote is the same (builds are deterministic),
  so that failure is taken as "prepared by someone else" once the prepared copy reads back.
  """
  builder = make_builder()
  if builder.is_prepared():
    return builder
  try:
    # TFDS prints its "Downloading and preparing" lines to stdout, where the scripts write
    # their results (scripts/baselines.py's table): they go to stderr with the logs.
    with contextlib.redirect_stdout(sys.stderr):
      builder.download_and_prepare(
          download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  except OSError:  # FileExistsError, or ENOTEMPTY when both renames passed the exists check
    builder = make_builder()
    if not builder.is_prepared():
      raise
  return builder


def resolve_config(config: Any, config_cls: type, predefined: Mapping[str, Any], default: str,
                   parse: Callable[[str], Any], what: str, naming_help: str) -> Any:
  """None (the default), a `config_cls`, a predefined name, or a custom name that `parse`
  turns into a config -> that config. Only canonical spellings are accepted (`parse(name).name
  == name`), so one variant has one directory; anything else is a ValueError listing the
  predefined names, then `naming_help`."""
  if config is None:
    return predefined[default]
  if isinstance(config, config_cls):
    return config
  if not isinstance(config, str):
    raise TypeError(f'{what} config must be a name or an {config_cls.__name__}, got '
                    f'{type(config).__name__}.')
  name = config.split(':')[0]
  if name in predefined:
    return predefined[name]
  parsed = parse(name)
  if parsed is not None and parsed.name == name:
    return parsed
  raise ValueError(f'Unknown {what} builder config {config!r}. Predefined: '
                   f'{", ".join(predefined)}. {naming_help}')
