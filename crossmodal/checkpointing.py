"""Checkpoints for the training loop: Orbax saves, a workdir lock, a preemption flag.

Three pieces, all used by `train.train_and_evaluate`:

* `Checkpointer` wraps one `orbax.checkpoint.CheckpointManager`. Each step directory holds
  the train-state pytree (`state/`) and a JSON record (`meta/`: step, input-pipeline
  position, metrics, a fingerprint of the state tree). Saves are asynchronous and atomic
  (Orbax writes `<step>.orbax-checkpoint-tmp` and renames it when complete; on GCS it
  writes a commit file instead), so a crash mid-save leaves the previous step as latest.
  Retention is "last K plus the best by a validation metric" through one Orbax
  preservation policy (`LatestN` OR `BestN(n=1)`), so the best checkpoint survives even
  when it is older than the last K. Restores go onto the shardings of a target pytree,
  so a checkpoint written on 8 devices restores on 1 and the other way round, and a
  target whose tree does not match the checkpoint is rejected with the names of the
  mismatching parameters before Orbax reads any array.
* `WorkdirLock` stops two runs from writing the same workdir at once.
* `install_preemption_handler` turns SIGTERM into a flag that the loop polls every step:
  save, `wait_until_finished()`, exit cleanly.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import json
import math
import os
import signal
import socket
import threading
import time
from collections.abc import Mapping
from typing import Any, Iterable

import jax
import numpy as np
import orbax.checkpoint as ocp
from absl import logging
from orbax.checkpoint.checkpoint_managers import preservation_policy as ocp_preservation

__all__ = [
    "Checkpointer",
    "PreemptionHandler",
    "WorkdirLock",
    "WorkdirLockedError",
    "install_preemption_handler",
    "tree_spec",
]

_STATE = "state"
_META = "meta"
_BEST_MODES = ("max", "min")
_MAX_LISTED = 20  # mismatching parameters listed per category in an error message


# --------------------------------------------------------------------------- tree specs


def _key_name(key) -> str:
    """One path element as a string; dict keys, attributes and indices alike."""
    for attr in ("key", "name", "idx"):
        if hasattr(key, attr):
            return str(getattr(key, attr))
    return str(key)


def _path_name(path) -> str:
    return "/".join(_key_name(k) for k in path)


def _is_key_dtype(dtype) -> bool:
    return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def _leaf_spec(leaf) -> tuple[tuple[int, ...], str | None]:
    """(shape, dtype name) of a target leaf as Orbax stores it; dtype None = Python scalar.

    Typed PRNG keys are stored as their raw `key_data` (e.g. uint32[2]), so they are
    described that way too.
    """
    if isinstance(leaf, (bool, int, float, complex)):
        return (), None
    shape, dtype = getattr(leaf, "shape", None), getattr(leaf, "dtype", None)
    if shape is None or dtype is None:
        raise TypeError(
            f"train state leaf of type {type(leaf).__name__} is not an array, "
            "ShapeDtypeStruct or Python scalar; checkpoints hold arrays only"
        )
    if _is_key_dtype(dtype):
        data = jax.eval_shape(jax.random.key_data, jax.ShapeDtypeStruct(shape, dtype))
        shape, dtype = data.shape, data.dtype
    return tuple(int(d) for d in shape), np.dtype(dtype).name


def _metadata_spec(md) -> tuple[tuple[int, ...], str | None]:
    """(shape, dtype name) of a leaf of Orbax's stored tree metadata."""
    if isinstance(md, ocp.metadata.ScalarMetadata):
        return (), None
    shape, dtype = getattr(md, "shape", None), getattr(md, "dtype", None)
    shape = tuple(int(d) for d in shape) if shape is not None else None
    return shape, (np.dtype(dtype).name if dtype is not None else None)


def tree_spec(tree) -> dict[str, tuple[tuple[int, ...], str | None]]:
    """Maps 'params/Dense_0/kernel'-style paths to (shape, dtype) for every leaf of `tree`.

    Works on concrete arrays and on `jax.ShapeDtypeStruct`s alike.
    """
    leaves = jax.tree_util.tree_flatten_with_path(tree)[0]
    return {_path_name(path): _leaf_spec(leaf) for path, leaf in leaves}


def _fingerprint(spec: Mapping[str, tuple]) -> str:
    """Short stable hash of a tree spec: equal for states of the same model and optimizer."""
    text = json.dumps(sorted((k, list(s), d) for k, (s, d) in spec.items()))
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _spec_str(spec) -> str:
    shape, dtype = spec
    return f"{shape} {dtype or 'python-scalar'}"


def _spec_mismatch(saved, wanted) -> bool:
    (s_shape, s_dtype), (w_shape, w_dtype) = saved, wanted
    if s_shape is not None and s_shape != w_shape:
        return True
    # Python scalars carry no fixed dtype (Orbax casts them), so only arrays compare dtypes.
    return s_dtype is not None and w_dtype is not None and s_dtype != w_dtype


def _listing(items: list[str]) -> str:
    """One item per line, at most _MAX_LISTED of them."""
    lines = [f"    {item}" for item in items[:_MAX_LISTED]]
    if len(items) > _MAX_LISTED:
        lines.append(f"    ... and {len(items) - _MAX_LISTED} more")
    return "\n".join(lines)


def _params_first(path: str):
    """Sort key listing model parameters before optimizer state and the rest."""
    return (not path.startswith("params"), path)


# --------------------------------------------------------------------------- JSON helpers


def _to_json(value):
    """Metrics (numpy/jax scalars, nested dicts) as plain JSON values."""
    if isinstance(value, Mapping):
        return {str(k): _to_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_to_json(v) for v in value]
    if isinstance(value, (str, bool, int, float)) or value is None:
        return value
    array = np.asarray(value)
    if array.ndim == 0:
        return array.item()
    return array.tolist()


def _lookup_metric(metrics: Mapping | None, name: str):
    """`metrics[name]`, or the nested `metrics['validation']['accuracy']` for 'a/b' names."""
    if not metrics or not name:
        return None
    if name in metrics:
        return metrics[name]
    node = metrics
    for part in name.split("/"):
        if not isinstance(node, Mapping) or part not in node:
            return None
        node = node[part]
    return node


# --------------------------------------------------------------------------- Checkpointer


class Checkpointer:
    """Saves and restores the train state plus the input-pipeline position with Orbax.

    Layout: `directory/<step>/{state,meta,metrics}`. Keeps the `max_to_keep` latest steps
    and, with `keep_best`, also the single best step by `best_metric` (`best_mode` 'max'
    or 'min'); steps saved without that metric (or with a NaN) are kept only while they
    are among the latest. Leftover `*.orbax-checkpoint-tmp` directories from a crashed
    save are never listed as steps and are deleted when a Checkpointer is created.

    Multi-process: Orbax's CheckpointManager coordinates the processes with barriers, so
    construct the Checkpointer and call `save`, `restore`, `wait_until_finished` and
    `close` on *every* process, in the same order and with the same steps; only the
    primary process writes the JSON files, every process writes its own array shards.
    The directory must then be shared by all hosts (e.g. gs://...).
    """

    def __init__(
        self,
        directory: str | os.PathLike,
        *,
        max_to_keep: int | None = 2,
        keep_best: bool = True,
        best_metric: str = "validation/accuracy",
        best_mode: str = "max",
        async_save: bool = True,
        read_only: bool = False,
    ):
        if best_mode not in _BEST_MODES:
            raise ValueError(f"Checkpointer: best_mode={best_mode!r}; valid choices: {_BEST_MODES}")
        if max_to_keep is not None and (not isinstance(max_to_keep, int) or max_to_keep < 1):
            raise ValueError(
                f"Checkpointer: max_to_keep={max_to_keep!r}; must be an int >= 1 or None (keep all)"
            )
        if keep_best and not best_metric:
            raise ValueError("Checkpointer: keep_best=True needs a best_metric name")
        directory = os.fspath(directory)
        if "://" not in directory:
            directory = os.path.abspath(directory)
        self.directory = directory
        self.best_metric = best_metric
        self.best_mode = best_mode
        self.keep_best = keep_best
        self._closed = False

        # Orbax ranks steps by `best_fn(metrics)`; we only hand it metrics that contain a
        # finite `best_metric`, so every ranked step has a comparable value.
        best_fn = lambda m: float(m[best_metric])  # noqa: E731
        policies = [ocp_preservation.LatestN(n=max_to_keep)]
        if keep_best:
            policies.append(
                ocp_preservation.BestN(
                    get_metric_fn=best_fn,
                    reverse=(best_mode == "min"),
                    n=1,
                    keep_checkpoints_without_metrics=False,
                )
            )
        options = ocp.CheckpointManagerOptions(
            preservation_policy=ocp_preservation.AnyPreservationPolicy(policies),
            best_fn=best_fn,  # enables metrics tracking and best_step()
            best_mode=best_mode,
            enable_async_checkpointing=async_save,
            # read_only: another run's checkpoints (train.init_from): never create, clean up
            # (an in-flight save of that run would be deleted) or save anything there.
            cleanup_tmp_directories=not read_only,
            create=not read_only,
            read_only=read_only,
        )
        registry = ocp.handlers.DefaultCheckpointHandlerRegistry()
        registry.add(_STATE, ocp.args.StandardSave, ocp.StandardCheckpointHandler)
        registry.add(_STATE, ocp.args.StandardRestore, ocp.StandardCheckpointHandler)
        registry.add(_META, ocp.args.JsonSave, ocp.JsonCheckpointHandler)
        registry.add(_META, ocp.args.JsonRestore, ocp.JsonCheckpointHandler)
        self._manager = ocp.CheckpointManager(directory, options=options, handler_registry=registry)

    # -- queries

    def all_steps(self) -> list[int]:
        """Steps with a finished checkpoint (and the one being saved asynchronously)."""
        return sorted(self._manager.all_steps())

    def latest_step(self) -> int | None:
        return self._manager.latest_step()

    def best_step(self) -> int | None:
        """Step with the best `best_metric` among kept steps; None if none recorded it."""
        return self._manager.best_step()

    # -- save

    def save(
        self,
        step: int,
        state: Any,
        *,
        pipeline_position: int,
        metrics: Mapping[str, Any] | None = None,
        force: bool = False,
    ) -> bool:
        """Starts an asynchronous save of `state` at `step`; returns whether it saved.

        `state` is the train-state pytree (replicated/sharded jax.Arrays, numpy arrays or
        Python scalars). The device-to-host copy happens before this returns, so the
        caller may donate or overwrite the state buffers right away. Returns False
        without saving if `step` already has a checkpoint, or if `step` is not after the
        latest saved step and `force` is False. `metrics` (JSON-able scalars, flat
        'validation/accuracy' keys or nested dicts) are stored in `meta` and rank
        the step for keep-best.
        """
        self._check_open()
        step = _as_nonnegative_int("step", step)
        pipeline_position = _as_nonnegative_int("pipeline_position", pipeline_position)
        if step in self._manager.all_steps():
            logging.info("Checkpoint for step %d already exists in %s; not saving again.",
                         step, self.directory)
            return False
        spec = tree_spec(state)
        meta = {
            "step": step,
            "pipeline_position": pipeline_position,
            "metrics": _to_json(dict(metrics)) if metrics else {},
            "tree_fingerprint": _fingerprint(spec),
            "num_leaves": len(spec),
            "process_count": jax.process_count(),
            "device_count": jax.device_count(),
            "saved_at": time.time(),
            # How this run ranks its checkpoints, for a run that starts from one of them.
            "best": {"metric": self.best_metric, "mode": self.best_mode} if self.keep_best
            else None,
        }
        ranked = None
        value = _lookup_metric(metrics, self.best_metric)
        if value is not None:
            value = float(np.asarray(value))
            if math.isfinite(value):
                ranked = {self.best_metric: value}
        saved = self._manager.save(
            step,
            args=ocp.args.Composite(
                **{_STATE: ocp.args.StandardSave(state), _META: ocp.args.JsonSave(meta)}
            ),
            metrics=ranked,
            force=force,
        )
        if saved:
            logging.info("saving checkpoint %d to %s%s", step, self.directory,
                         f" ({self.best_metric}={ranked[self.best_metric]:.4g})" if ranked else "")
        return bool(saved)

    # -- restore

    def restore(self, target_state: Any, step: int | None = None, best: bool = False):
        """Restores a step onto `target_state`'s structure, shapes, dtypes and shardings.

        `target_state` is a concrete train state (e.g. freshly initialised and placed on
        the mesh) or its abstract twin of `jax.ShapeDtypeStruct`s; each restored array
        gets the target leaf's sharding, whatever device layout wrote the checkpoint
        (a ShapeDtypeStruct without sharding restores onto the first local device; numpy
        and Python-scalar leaves restore as numpy/Python values). Picks `step`, else the
        best step if `best`, else the latest. Returns `(state, pipeline_position, meta)`.

        Raises FileNotFoundError if there is no such checkpoint, and ValueError naming
        the missing, unexpected and shape/dtype-mismatched parameters if the checkpoint
        was written for a different tree (another model or config).
        """
        step = self._resolve_step(step, best)
        self.check_compatible(target_state, step)
        abstract = jax.tree.map(_abstract_leaf, target_state)
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                **{_STATE: ocp.args.StandardRestore(abstract), _META: ocp.args.JsonRestore()}
            ),
        )
        meta = dict(restored[_META])
        return restored[_STATE], int(meta["pipeline_position"]), meta

    def restore_stored(self, step: int | None = None, best: bool = False,
                       sharding: jax.sharding.Sharding | None = None) -> tuple[Any, dict]:
        """`(tree, meta)`: the state of a step as the checkpoint stores it (nested dicts:
        'params', 'batch_stats', 'opt_state', ...), shaped by its own metadata, so no target
        is needed: for taking parts of another run's parameters (`train.init_from`). Arrays
        get `sharding` (default: the first local device)."""
        step = self._resolve_step(step, best)
        sharding = sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        stored = self._manager.item_metadata(step)[_STATE]
        stored = getattr(stored, "tree", stored)
        abstract = jax.tree.map(
            lambda md: jax.ShapeDtypeStruct(tuple(md.shape), md.dtype, sharding=sharding),
            stored)
        restored = self._manager.restore(
            step,
            args=ocp.args.Composite(
                **{_STATE: ocp.args.StandardRestore(abstract), _META: ocp.args.JsonRestore()}
            ),
        )
        return restored[_STATE], dict(restored[_META])

    def meta(self, step: int) -> dict:
        """The JSON metadata saved with `step` (no arrays are read)."""
        restored = self._manager.restore(
            step, args=ocp.args.Composite(**{_META: ocp.args.JsonRestore()}))
        return dict(restored[_META])

    def _resolve_step(self, step: int | None, best: bool) -> int:
        """`step`, else the best step if `best`, else the latest; FileNotFoundError if none."""
        self._check_open()
        # A save of this very step may still be in flight.
        self._manager.wait_until_finished()
        steps = self.all_steps()
        if best and step is not None:
            raise ValueError("Checkpointer.restore: give either step= or best=True, not both")
        if best:
            step = self.best_step()
            if step is None:
                raise FileNotFoundError(
                    f"No checkpoint in {self.directory} recorded metric {self.best_metric!r} "
                    f"(steps present: {steps})"
                )
        elif step is None:
            step = self.latest_step()
            if step is None:
                raise FileNotFoundError(f"No checkpoints in {self.directory}")
        else:
            step = _as_nonnegative_int("step", step)
            if step not in steps:
                raise FileNotFoundError(
                    f"No checkpoint for step {step} in {self.directory}; steps present: {steps}"
                )
        return step

    def check_compatible(self, target_state: Any, step: int) -> None:
        """Raises ValueError if the stored tree at `step` differs from `target_state`'s."""
        stored = self._manager.item_metadata(step)[_STATE]
        stored = getattr(stored, "tree", stored)
        saved = {
            _path_name(path): _metadata_spec(md)
            for path, md in jax.tree_util.tree_flatten_with_path(stored)[0]
        }
        wanted = tree_spec(target_state)
        missing = sorted(set(wanted) - set(saved), key=_params_first)
        unexpected = sorted(set(saved) - set(wanted), key=_params_first)
        changed = sorted((k for k in set(saved) & set(wanted)
                          if _spec_mismatch(saved[k], wanted[k])), key=_params_first)
        if not (missing or unexpected or changed):
            return
        lines = [
            f"Checkpoint step {step} in {self.directory} does not match the target train state "
            "(was it written by another model or config?):"
        ]
        if missing:
            lines.append(f"  missing from the checkpoint ({len(missing)}):\n{_listing(missing)}")
        if unexpected:
            lines.append(f"  unexpected in the checkpoint, not in the target ({len(unexpected)}):\n"
                         f"{_listing(unexpected)}")
        if changed:
            details = [f"{k}: checkpoint {_spec_str(saved[k])} vs target {_spec_str(wanted[k])}"
                       for k in changed]
            lines.append(f"  shape/dtype mismatch ({len(changed)}):\n{_listing(details)}")
        raise ValueError("\n".join(lines))

    # -- lifecycle

    def wait_until_finished(self) -> None:
        """Blocks until the pending asynchronous save (and its cleanup) has finished."""
        self._manager.wait_until_finished()

    def close(self) -> None:
        """Waits for pending saves and releases Orbax's threads; safe to call twice."""
        if not self._closed:
            self._manager.close()
            self._closed = True

    def __enter__(self) -> "Checkpointer":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _check_open(self) -> None:
        if self._closed:
            raise RuntimeError(f"Checkpointer for {self.directory} is closed")


def _as_nonnegative_int(name: str, value) -> int:
    if isinstance(value, bool):
        raise TypeError(f"Checkpointer: {name} must be an int, got a bool")
    try:
        integer = int(np.asarray(value))
    except (TypeError, ValueError):
        raise TypeError(f"Checkpointer: {name} must be an int, got {value!r}") from None
    if integer != np.asarray(value) or integer < 0:
        raise ValueError(f"Checkpointer: {name} must be a non-negative int, got {value!r}")
    return integer


def _abstract_leaf(leaf):
    """Restore target for one leaf: a ShapeDtypeStruct carrying the wanted sharding."""
    if isinstance(leaf, jax.Array):
        return ocp.tree.to_shape_dtype_struct(leaf)  # keeps sharding; keys -> key_data
    if isinstance(leaf, jax.ShapeDtypeStruct):
        sharding = leaf.sharding or jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
        shape, dtype = leaf.shape, leaf.dtype
        if _is_key_dtype(dtype):
            data = jax.eval_shape(jax.random.key_data, jax.ShapeDtypeStruct(shape, dtype))
            shape, dtype = data.shape, data.dtype
        return jax.ShapeDtypeStruct(shape, dtype, sharding=sharding)
    return leaf  # numpy arrays and Python scalars restore as themselves


# --------------------------------------------------------------------------- workdir lock


class WorkdirLockedError(RuntimeError):
    """Another live run holds the workdir."""


class WorkdirLock:
    """Exclusive lock on a workdir, held for the life of a run (a context manager).

    Uses `fcntl.flock` on `<workdir>/.crossmodal.lock`: the kernel releases it when the
    holder exits for any reason, SIGKILL included, so a crashed run never blocks a
    restart and there is no stale-lock cleanup. The file itself stays on disk and
    records the holder's host and pid for the error message.

    Limitations: flock is per host. Only process 0 of a multi-process job takes the lock
    (`process_index`, default `jax.process_index()` once `jax.distributed` is initialized,
    else 0); two jobs on *different* hosts sharing a network filesystem are only excluded
    if that filesystem honours flock (NFSv4 does, many FUSE mounts don't). Object-store
    workdirs (gs://, s3://) cannot be locked this way: the lock is skipped with a warning
    (`acquired` stays False). Child processes forked by the run (e.g. data workers)
    inherit the lock and hold it until they exit too.
    """

    LOCK_NAME = ".crossmodal.lock"

    def __init__(self, workdir: str | os.PathLike, *, process_index: int | None = None):
        self.workdir = os.fspath(workdir)
        self.path = os.path.join(self.workdir, self.LOCK_NAME)
        if process_index is None:
            process_index = jax.process_index() if jax.distributed.is_initialized() else 0
        self.process_index = process_index
        self.acquired = False
        self._fd: int | None = None

    def acquire(self) -> "WorkdirLock":
        if self._fd is not None:
            return self
        if "://" in self.workdir:
            logging.warning("WorkdirLock: %s is not a local path; running without a workdir "
                            "lock, make sure no other run uses it.", self.workdir)
            return self
        if self.process_index != 0:
            return self
        os.makedirs(self.workdir, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as e:
            os.close(fd)
            if e.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                raise
            raise WorkdirLockedError(
                f"Workdir {self.workdir} is in use by another run ({self._holder()}); "
                f"lock file {self.path}. Wait for that run to finish or stop it, or choose "
                "another --workdir."
            ) from None
        os.ftruncate(fd, 0)
        info = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}
        os.write(fd, json.dumps(info).encode())
        self._fd, self.acquired = fd, True
        return self

    def release(self) -> None:
        if self._fd is None:
            return
        try:
            os.ftruncate(self._fd, 0)
            fcntl.flock(self._fd, fcntl.LOCK_UN)
        finally:
            os.close(self._fd)
            self._fd, self.acquired = None, False

    def _holder(self) -> str:
        try:
            with open(self.path) as f:
                info = json.loads(f.read() or "{}")
            return f"host {info['host']}, pid {info['pid']}"
        except (OSError, ValueError, KeyError):
            return "holder unknown"

    def __enter__(self) -> "WorkdirLock":
        return self.acquire()

    def __exit__(self, *exc) -> None:
        self.release()


# --------------------------------------------------------------------------- preemption


class PreemptionHandler:
    """A stop flag raised by SIGTERM (the usual preemption notice); see
    `install_preemption_handler`.

    The loop calls `should_stop(step)` every step; when it returns True the loop saves a
    checkpoint, calls `Checkpointer.wait_until_finished()` and returns.

    Modes, chosen from how JAX runs:
    * one process: a Python signal handler sets the flag.
    * several processes with JAX's preemption service (`jax.distributed.initialize()`
      with `jax_enable_preemption_service`, the default, e.g. multi-host TPU): no Python
      handler is installed, since JAX's coordination service owns SIGTERM and tells every
      host; `should_stop(step)` is `multihost_utils.reached_preemption_sync_point(step)`,
      True on all processes at the same step. All processes must start from the same
      step and call it on every step.
    * several processes without that service: the Python handler sets the local flag
      and `should_stop` OR-reduces it over processes (one tiny collective per call), so
      all processes stop at the same step; call it on every process at the same steps.
    """

    def __init__(self, signals: Iterable[int] = (signal.SIGTERM,), *,
                 use_sync_point: bool | None = None):
        multi_process = jax.distributed.is_initialized() and jax.process_count() > 1
        if use_sync_point is None:
            use_sync_point = multi_process and bool(jax.config.jax_enable_preemption_service)
        self.use_sync_point = use_sync_point
        self.multi_process = multi_process
        self.signals = tuple(signals)
        self.signal_received: int | None = None
        self._requested = False
        self._previous: dict[int, Any] = {}

    @property
    def requested(self) -> bool:
        """True once a stop was requested (signal here, or a sync point was reached)."""
        return self._requested

    def install(self) -> "PreemptionHandler":
        if self.use_sync_point or self._previous:
            return self
        if threading.current_thread() is not threading.main_thread():
            raise RuntimeError("install_preemption_handler must be called from the main thread "
                               "(Python only delivers signals there)")
        for sig in self.signals:
            self._previous[sig] = signal.signal(sig, self._on_signal)
        return self

    def _on_signal(self, signum, frame) -> None:
        del frame
        self._requested = True
        self.signal_received = signum

    def should_stop(self, step: int) -> bool:
        """Whether the loop should save and exit after `step` (same answer on all processes)."""
        if self.use_sync_point:
            from jax.experimental import multihost_utils
            if multihost_utils.reached_preemption_sync_point(int(step)):
                self._requested = True
        elif self.multi_process:
            from jax.experimental import multihost_utils
            flags = multihost_utils.process_allgather(np.asarray(self._requested, np.int32))
            self._requested = bool(np.max(flags))
        if self._requested and self.signal_received is not None:
            logging.log_first_n(logging.WARNING, "Stop requested by signal %d at step %d.", 1,
                                self.signal_received, int(step))
        return self._requested

    def close(self) -> None:
        """Puts back the signal handlers that were installed before."""
        for sig, previous in self._previous.items():
            signal.signal(sig, previous if previous is not None else signal.SIG_DFL)
        self._previous = {}

    def __enter__(self) -> "PreemptionHandler":
        return self

    def __exit__(self, *exc) -> None:
        self.close()


def install_preemption_handler(signals: Iterable[int] = (signal.SIGTERM,), *,
                               use_sync_point: bool | None = None) -> PreemptionHandler:
    """Installs a `PreemptionHandler` for `signals` (default SIGTERM) and returns it.

    Call from the main thread, after `jax.distributed.initialize()` on multi-process
    runs. Use as a context manager or call `.close()` to restore the previous handlers.
    """
    return PreemptionHandler(signals, use_sync_point=use_sync_point).install()
