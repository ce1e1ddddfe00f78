"""What the console shows: the run's own progress, not the libraries' mechanics.

Orbax and TFDS log through absl, as this package does, so every line reaches the one absl
handler under the one 'absl' logger: a logger level cannot tell them apart. `quiet_libraries`
adds a filter to that handler that decides by the file a record comes from. At the default
verbosity (0, INFO) it drops

  - INFO and DEBUG lines from outside `crossmodal/` (Orbax's ~40 lines per checkpoint save,
    TFDS's per-shard and dataset-info lines, JAX's backend probing), and
  - a few library warnings that are expected in every run (`_EXPECTED_WARNINGS`),

and keeps every line from `crossmodal/` and every other library warning and error. With
`--verbosity=1` (or higher) nothing is dropped. Lines that C++ code writes to stderr itself
(TensorFlow's "oneDNN custom operations are on", which TF_CPP_MIN_LOG_LEVEL does not silence in
TF 2.21) and TFDS's progress bars and prints do not go through Python logging and stay.
"""
import logging
import os

from absl import logging as absl_logging

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep

# (file path fragment, start of the unformatted message): library warnings that every run
# triggers by design, so they say nothing about this run.
_EXPECTED_WARNINGS = (
    # Every AV-MNIST builder config is made on the fly from config.data (not a registered one).
    (f'{os.sep}tensorflow_datasets{os.sep}', 'Using custom data configuration'),
    # Checked before the first build, when the version folder is still empty.
    (f'{os.sep}tensorflow_datasets{os.sep}', 'Variant folder %s has no %s'),
    # Checkpoints between evaluations are saved without metrics; only evaluated ones are ranked.
    (f'{os.sep}orbax{os.sep}', 'Requested `tracked_metric`; did not provide metrics'),
)


def is_own(record: logging.LogRecord) -> bool:
  """Whether `record` was logged by this package's code."""
  return os.path.abspath(record.pathname).startswith(_PACKAGE_DIR)


class LibraryFilter(logging.Filter):
  """Passes this package's records, and other code's warnings except `_EXPECTED_WARNINGS`."""

  def filter(self, record: logging.LogRecord) -> bool:
    if is_own(record):
      return True
    if record.levelno < logging.WARNING:
      return False
    message = str(record.msg)
    return not any(part in record.pathname and message.startswith(start)
                   for part, start in _EXPECTED_WARNINGS)


def quiet_libraries(verbosity: int) -> None:
  """Below absl `verbosity` 1, keeps libraries' INFO lines and expected warnings off the console
  (and log files); see the module docstring. Call once absl's handler is installed (in main)."""
  if verbosity >= 1:
    return
  handler = absl_logging.get_absl_handler()
  if not any(isinstance(f, LibraryFilter) for f in handler.filters):
    handler.addFilter(LibraryFilter())
