"""Tests for crossmodal.checkpointing: Orbax save/restore, retention, resharding, locks, SIGTERM."""

import json
import os
import select
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import struct

from crossmodal import checkpointing
from crossmodal.checkpointing import (
    Checkpointer,
    WorkdirLock,
    WorkdirLockedError,
    install_preemption_handler,
)
from conftest import REPO, assert_trees_bitwise_equal, free_port, host_leaves

PYTHONPATH = os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
TMP_SUFFIX = ".orbax-checkpoint-tmp"


@struct.dataclass
class TrainState:
    step: jax.Array
    params: dict
    batch_stats: dict
    opt_state: optax.OptState
    rng: jax.Array


class MLP(nn.Module):
    widths: tuple = (4,)
    batch_norm: bool = True

    @nn.compact
    def __call__(self, x, train=False):
        for w in self.widths:
            x = nn.relu(nn.Dense(w)(x))
        if self.batch_norm:
            x = nn.BatchNorm(use_running_average=not train)(x)
        return nn.Dense(2)(x)


def make_state(seed, widths=(4,), batch_norm=True, updates=2):
    """A realistic train state: params, BatchNorm stats, adamw state after `updates` steps.

    Gradients are a fixed function of the params (no model backward pass: keeps it fast).
    """
    model = MLP(widths, batch_norm)
    variables = model.init(jax.random.PRNGKey(seed), jnp.ones((1, 3)))
    params = variables["params"]
    stats = jax.tree.map(lambda s: s + 0.25 * seed + 0.5, variables.get("batch_stats", {}))
    tx = optax.adamw(1e-2, weight_decay=1e-4)
    opt_state = tx.init(params)
    for i in range(updates):
        grads = jax.tree.map(lambda p: jnp.sin(3.0 * p + i), params)
        upd, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, upd)
    return TrainState(step=jnp.asarray(updates, jnp.int32), params=params, batch_stats=stats,
                      opt_state=opt_state, rng=jax.random.key(seed))


def step_dirs(directory):
    return sorted(int(p.name) for p in Path(directory).iterdir() if p.name.isdigit())


def tmp_dirs(directory):
    return [p.name for p in Path(directory).iterdir() if TMP_SUFFIX in p.name]


# ----------------------------------------------------------------------------- round trip


@pytest.mark.parametrize("async_save", [True, False])
def test_round_trip_is_bitwise_exact(tmp_path, async_save):
    state = make_state(0)
    target = make_state(1)  # same structure, different values
    assert host_leaves(state)[".params['Dense_0']['kernel']"].tobytes() != \
        host_leaves(target)[".params['Dense_0']['kernel']"].tobytes()
    metrics = {"validation/accuracy": np.float32(0.75), "train": {"loss": jnp.asarray(0.5)}}
    with Checkpointer(tmp_path / "ckpt", async_save=async_save) as ckpt:
        assert ckpt.save(2, state, pipeline_position=123, metrics=metrics)
        ckpt.wait_until_finished()
        restored, position, meta = ckpt.restore(target)

    assert isinstance(restored, TrainState)
    assert_trees_bitwise_equal(restored, state)
    assert jax.dtypes.issubdtype(restored.rng.dtype, jax.dtypes.prng_key)
    assert restored.batch_stats  # BatchNorm statistics were saved, not dropped
    assert position == 123
    assert meta["step"] == 2 and meta["pipeline_position"] == 123
    assert meta["metrics"] == {"validation/accuracy": 0.75, "train": {"loss": 0.5}}
    assert meta["tree_fingerprint"] == checkpointing._fingerprint(checkpointing.tree_spec(target))
    # The meta record is plain JSON on disk, readable without Orbax.
    meta_files = list((tmp_path / "ckpt" / "2" / "meta").iterdir())
    assert json.loads(meta_files[0].read_text())["pipeline_position"] == 123


def test_restore_onto_abstract_target_and_plain_leaves(tmp_path):
    state = {"step": 7, "w": np.arange(6, dtype=np.float32).reshape(2, 3),
             "b": jnp.full((3,), 2.5, jnp.bfloat16), "empty": {}}
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(7, state, pipeline_position=0)
        abstract = {"step": 0, "w": np.zeros((2, 3), np.float32),
                    "b": jax.ShapeDtypeStruct((3,), jnp.bfloat16), "empty": {}}
        restored, _, _ = ckpt.restore(abstract)
    assert restored["step"] == 7
    np.testing.assert_array_equal(restored["w"], state["w"])
    assert restored["b"].dtype == jnp.bfloat16
    assert restored["b"].sharding.device_set == {jax.local_devices()[0]}
    np.testing.assert_array_equal(np.asarray(restored["b"], np.float32), 2.5)


def test_async_save_survives_donated_buffers(tmp_path):
    """save() copies to host before returning: deleting the arrays right after is safe."""
    state = {"w": jax.random.normal(jax.random.PRNGKey(0), (256, 256)), "step": jnp.asarray(1)}
    expected = host_leaves(state)
    target = jax.tree.map(jnp.zeros_like, state)
    with Checkpointer(tmp_path, async_save=True) as ckpt:
        assert ckpt.save(1, state, pipeline_position=5)
        for leaf in jax.tree.leaves(state):
            leaf.delete()  # what buffer donation in the next train step does
        ckpt.wait_until_finished()
        assert step_dirs(tmp_path) == [1] and not tmp_dirs(tmp_path)
        restored, position, _ = ckpt.restore(target)
    assert position == 5
    got = host_leaves(restored)
    for k in expected:
        np.testing.assert_array_equal(got[k], expected[k])


def test_restore_latest_by_default_and_step_errors(tmp_path):
    with Checkpointer(tmp_path, max_to_keep=2) as ckpt:
        with pytest.raises(FileNotFoundError, match="No checkpoints"):
            ckpt.restore({"x": np.zeros(2, np.float32)})
        for step in (1, 2, 3):
            ckpt.save(step, {"x": np.full(2, step, np.float32)}, pipeline_position=10 * step)
        ckpt.wait_until_finished()
        assert ckpt.latest_step() == 3
        state, position, meta = ckpt.restore({"x": np.zeros(2, np.float32)})
        np.testing.assert_array_equal(state["x"], [3, 3])
        assert (position, meta["step"]) == (30, 3)
        state, position, _ = ckpt.restore({"x": np.zeros(2, np.float32)}, step=2)
        np.testing.assert_array_equal(state["x"], [2, 2])
        assert position == 20
        with pytest.raises(FileNotFoundError, match=r"step 1 .*steps present: \[2, 3\]"):
            ckpt.restore({"x": np.zeros(2, np.float32)}, step=1)
        with pytest.raises(FileNotFoundError, match="validation/accuracy"):
            ckpt.restore({"x": np.zeros(2, np.float32)}, best=True)
        # Saving an existing step again is a no-op, not an error or an overwrite.
        assert not ckpt.save(3, {"x": np.zeros(2, np.float32)}, pipeline_position=0)
        np.testing.assert_array_equal(ckpt.restore({"x": np.zeros(2, np.float32)})[0]["x"], [3, 3])


# ----------------------------------------------------------------------------- retention


def _save_series(ckpt, series, key="validation/accuracy"):
    for step, value in series:
        metrics = {key: value} if value is not None else {"train/loss": 1.0}
        ckpt.save(step, {"x": np.full(3, step, np.float32)}, pipeline_position=step,
                  metrics=metrics)
    ckpt.wait_until_finished()


def test_keeps_last_k_plus_best(tmp_path):
    series = [(1, 0.5), (2, 0.9), (3, 0.4), (4, None), (5, 0.3), (6, float("nan"))]
    with Checkpointer(tmp_path, max_to_keep=2) as ckpt:
        _save_series(ckpt, series)
        assert ckpt.best_step() == 2
        # Best (step 2) survives although older than the last two; NaN never ranks.
        assert step_dirs(tmp_path) == [2, 5, 6]
        assert ckpt.all_steps() == [2, 5, 6]

    # A new run on the same directory sees the same steps and still knows the best.
    with Checkpointer(tmp_path, max_to_keep=2) as ckpt:
        assert ckpt.all_steps() == [2, 5, 6] and ckpt.best_step() == 2
        state, position, meta = ckpt.restore({"x": np.zeros(3, np.float32)}, best=True)
        np.testing.assert_array_equal(state["x"], 2)
        assert position == 2 and meta["metrics"]["validation/accuracy"] == 0.9
        # A better step replaces the old best, which is then deleted.
        _save_series(ckpt, [(7, 0.95)])
        assert ckpt.best_step() == 7
        assert step_dirs(tmp_path) == [6, 7]


def test_keep_best_min_mode_nested_metric_and_disabled(tmp_path):
    series = [(1, 3.0), (2, 1.0), (3, 2.0), (4, 5.0), (5, 4.0)]
    with Checkpointer(tmp_path / "min", max_to_keep=1, best_metric="validation/loss",
                      best_mode="min") as ckpt:
        for step, loss in series:  # nested {'validation': {'loss': ...}} form
            ckpt.save(step, {"x": np.zeros(1)}, pipeline_position=0,
                      metrics={"validation": {"loss": loss}})
        ckpt.wait_until_finished()
        assert ckpt.best_step() == 2
        assert step_dirs(tmp_path / "min") == [2, 5]
    with Checkpointer(tmp_path / "latest_only", max_to_keep=2, keep_best=False) as ckpt:
        _save_series(ckpt, [(1, 0.9), (2, 0.1), (3, 0.2)])
        assert step_dirs(tmp_path / "latest_only") == [2, 3]


def test_bad_options_and_arguments(tmp_path):
    with pytest.raises(ValueError, match=r"best_mode='median'.*'max', 'min'"):
        Checkpointer(tmp_path, best_mode="median")
    with pytest.raises(ValueError, match="max_to_keep"):
        Checkpointer(tmp_path, max_to_keep=0)
    with Checkpointer(tmp_path) as ckpt:
        with pytest.raises(ValueError, match="pipeline_position"):
            ckpt.save(1, {"x": np.zeros(1)}, pipeline_position=-1)
        with pytest.raises(TypeError, match="step"):
            ckpt.save("one", {"x": np.zeros(1)}, pipeline_position=0)
        with pytest.raises(ValueError, match="either step= or best=True"):
            ckpt.restore({"x": np.zeros(1)}, step=1, best=True)
    with pytest.raises(RuntimeError, match="closed"):
        ckpt.save(2, {"x": np.zeros(1)}, pipeline_position=0)


# ----------------------------------------------------------------------------- mismatch


def test_mismatched_tree_names_the_parameters(tmp_path):
    with Checkpointer(tmp_path) as ckpt:
        ckpt.save(1, make_state(0, widths=(4,), updates=1), pipeline_position=0)
        ckpt.wait_until_finished()
        other = make_state(0, widths=(5, 6), updates=1)  # wider Dense_0 and an extra layer
        with pytest.raises(ValueError) as info:
            ckpt.restore(other)
        msg = str(info.value)
        assert "does not match the target train state" in msg
        assert "params/Dense_0/kernel: checkpoint (3, 4) float32 vs target (3, 5) float32" in msg
        missing = msg.split("missing from the checkpoint")[1].split("shape/dtype")[0]
        assert "params/Dense_2/kernel" in missing and "params/Dense_2/bias" in missing
        assert "opt_state/0/mu/Dense_2/kernel" in missing

        fewer = make_state(0, widths=(4,), batch_norm=False, updates=1)
        with pytest.raises(ValueError, match=r"unexpected in the checkpoint[^\n]*\n"
                                             r"(    .*\n)*    batch_stats/BatchNorm_0/mean"):
            ckpt.restore(fewer)

        half = make_state(0, updates=1)
        half = half.replace(params=jax.tree.map(lambda p: p.astype(jnp.bfloat16), half.params))
        with pytest.raises(ValueError, match=r"params/Dense_0/bias: checkpoint \(4,\) float32 "
                                             r"vs target \(4,\) bfloat16"):
            ckpt.restore(half)
        # The matching target still restores after the failures.
        restored, _, _ = ckpt.restore(make_state(3, updates=1))
        assert_trees_bitwise_equal(restored, make_state(0, updates=1))


# ----------------------------------------------------------------------------- crash safety


def test_unfinished_tmp_dir_is_ignored(tmp_path):
    ckpt = Checkpointer(tmp_path, max_to_keep=3)
    ckpt.save(1, {"x": np.full(4, 1.0, np.float32)}, pipeline_position=10)
    ckpt.save(2, {"x": np.full(4, 2.0, np.float32)}, pipeline_position=20)
    ckpt.close()
    # A crash mid-save leaves `<step>.orbax-checkpoint-tmp`: here a complete copy of step 2
    # that was never committed (the worst case: all files present) and a half-written one.
    shutil.copytree(tmp_path / "2", tmp_path / f"3{TMP_SUFFIX}")
    (tmp_path / f"3{TMP_SUFFIX}" / "commit_success.txt").unlink(missing_ok=True)
    (tmp_path / f"4{TMP_SUFFIX}" / "state").mkdir(parents=True)
    (tmp_path / f"4{TMP_SUFFIX}" / "state" / "partial").write_bytes(b"\0" * 10)

    with Checkpointer(tmp_path, max_to_keep=3) as ckpt:
        assert ckpt.latest_step() == 2 and ckpt.all_steps() == [1, 2]
        state, position, meta = ckpt.restore({"x": np.zeros(4, np.float32)})
        np.testing.assert_array_equal(state["x"], 2.0)
        assert (position, meta["step"]) == (20, 2)
        # The resumed run can save the step that crashed.
        assert ckpt.save(3, {"x": np.full(4, 3.0, np.float32)}, pipeline_position=30)
        ckpt.wait_until_finished()
        state, position, _ = ckpt.restore({"x": np.zeros(4, np.float32)})
        np.testing.assert_array_equal(state["x"], 3.0)
        assert position == 30
    assert step_dirs(tmp_path) == [1, 2, 3] and not tmp_dirs(tmp_path)


# ----------------------------------------------------------------------------- device counts

WORKER = textwrap.dedent('''
    import sys
    import jax, jax.numpy as jnp, numpy as np, optax
    import flax.linen as nn
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from crossmodal.checkpointing import Checkpointer

    expected_devices = int(sys.argv[1])
    restore_dir, restore_ref, save_dir, save_ref = sys.argv[2:6]
    assert jax.device_count() == expected_devices, jax.devices()
    mesh = Mesh(np.array(jax.devices()), ("data",))
    replicated, by_rows = NamedSharding(mesh, P()), NamedSharding(mesh, P("data"))

    def build(seed):
        """Built on the host, then placed: no cross-device computation needed."""
        model = nn.Dense(4)
        x = jnp.ones((2, 3))
        params = model.init(jax.random.PRNGKey(seed), x)["params"]
        params = dict(params, embed=jax.random.normal(jax.random.PRNGKey(seed + 1), (16, 4)))
        tx = optax.adamw(1e-2)
        opt_state = tx.init(params)
        grads = jax.tree.map(lambda p: jnp.sin(p * (seed + 1.5)), params)
        upd, opt_state = tx.update(grads, opt_state, params)
        params = optax.apply_updates(params, upd)
        state = {"step": jnp.asarray(seed + 7, jnp.int32), "params": params,
                 "opt_state": opt_state, "rng": jax.random.PRNGKey(seed + 2)}
        state = jax.device_get(state)
        def place(path, leaf):
            name = jax.tree_util.keystr(path)
            return jax.device_put(leaf, by_rows if "embed" in name else replicated)
        return jax.block_until_ready(jax.tree_util.tree_map_with_path(place, state))

    def flat(tree):
        return {jax.tree_util.keystr(p): np.asarray(l)
                for p, l in jax.tree_util.tree_flatten_with_path(tree)[0]}

    def save(directory, ref):
        state = build(0)
        with Checkpointer(directory) as ckpt:
            ckpt.save(7, state, pipeline_position=70, metrics={"validation/accuracy": 0.5})
            ckpt.wait_until_finished()
        np.savez(ref, **flat(state))

    def restore(directory, ref):
        target = build(1)
        with Checkpointer(directory) as ckpt:
            restored, position, meta = ckpt.restore(target)
        jax.block_until_ready(restored)
        expected = np.load(ref)
        got = flat(restored)
        assert sorted(got) == sorted(expected.files), (sorted(got), expected.files)
        for k in got:
            assert got[k].dtype == expected[k].dtype, k
            assert got[k].tobytes() == expected[k].tobytes(), k
        restored_leaves = jax.tree_util.tree_flatten_with_path(restored)[0]
        for (path, r), t in zip(restored_leaves, jax.tree.leaves(target)):
            assert r.sharding == t.sharding, (jax.tree_util.keystr(path), r.sharding, t.sharding)
            assert len(r.addressable_shards) == expected_devices
        embed = restored["params"]["embed"]
        assert {s.data.shape for s in embed.addressable_shards} == {(16 // expected_devices, 4)}
        assert position == 70 and meta["device_count"] != expected_devices
        print("RESTORED OK on", expected_devices, "devices from", meta["device_count"], flush=True)

    # argv: restore_dir restore_ref save_dir save_ref (each pair may be "-")
    if restore_dir != "-":
        restore(restore_dir, restore_ref)
    if save_dir != "-":
        save(save_dir, save_ref)
''')


def run_worker(script, devices, restore=("-", "-"), save=("-", "-")):
    env = dict(os.environ, XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}",
               JAX_PLATFORMS="cpu", PYTHONPATH=PYTHONPATH)
    args = [str(devices), *map(str, restore), *map(str, save)]
    proc = subprocess.run(["timeout", "-s", "KILL", "150", sys.executable, str(script), *args],
                          env=env, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, f"worker on {devices} devices failed:\n{proc.stderr[-4000:]}"
    return proc.stdout


def test_restore_on_a_different_device_count(tmp_path):
    """8 -> 1 and 1 -> 8 devices, replicated and row-sharded leaves, in three processes."""
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    on8 = (tmp_path / "saved_on_8", tmp_path / "ref8.npz")
    on1 = (tmp_path / "saved_on_1", tmp_path / "ref1.npz")
    run_worker(script, 8, save=on8)
    out = run_worker(script, 1, restore=on8, save=on1)
    assert "RESTORED OK on 1 devices from 8" in out
    out = run_worker(script, 8, restore=on1)
    assert "RESTORED OK on 8 devices from 1" in out


# ----------------------------------------------------------------------------- workdir lock

HOLDER = textwrap.dedent('''
    import sys, time
    from crossmodal.checkpointing import WorkdirLock
    lock = WorkdirLock(sys.argv[1]).acquire()
    assert lock.acquired
    print("LOCKED", flush=True)
    time.sleep(120)
''')


def test_workdir_lock_refuses_second_run_and_survives_sigkill(tmp_path):
    workdir = tmp_path / "run"
    script = tmp_path / "holder.py"
    script.write_text(HOLDER)
    env = dict(os.environ, PYTHONPATH=PYTHONPATH)
    holder = subprocess.Popen([sys.executable, str(script), str(workdir)], env=env,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        ready, _, _ = select.select([holder.stdout], [], [], 120)
        assert ready, "lock holder did not start"
        assert holder.stdout.readline().strip() == "LOCKED", holder.stderr.read()

        with pytest.raises(WorkdirLockedError, match=rf"in use by another run .*pid {holder.pid}"):
            with WorkdirLock(workdir):
                pass
        holder.kill()  # SIGKILL: no cleanup code runs in the holder
        holder.wait(timeout=30)
        assert holder.returncode == -signal.SIGKILL
    finally:
        if holder.poll() is None:
            holder.kill()
            holder.wait()

    with WorkdirLock(workdir) as lock:  # a restart after the crash gets the lock
        assert lock.acquired
        assert json.loads(Path(lock.path).read_text())["pid"] == os.getpid()
        with pytest.raises(WorkdirLockedError):  # exclusive within one process as well
            WorkdirLock(workdir).acquire()
    assert not lock.acquired
    with WorkdirLock(workdir) as again:  # released on exit
        assert again.acquired


def test_workdir_lock_skips_remote_and_non_primary(tmp_path):
    remote = WorkdirLock("gs://bucket/run").acquire()
    assert not remote.acquired
    other_host = WorkdirLock(tmp_path / "run", process_index=1).acquire()
    assert not other_host.acquired and not (tmp_path / "run").exists()


# ----------------------------------------------------------------------------- preemption


def test_sigterm_sets_flag_and_close_restores_previous_handler():
    calls = []

    def previous(signum, frame):
        calls.append(signum)

    original = signal.signal(signal.SIGTERM, previous)
    try:
        handler = install_preemption_handler()
        assert not handler.use_sync_point
        assert not handler.requested and not handler.should_stop(0)
        os.kill(os.getpid(), signal.SIGTERM)
        deadline = time.monotonic() + 10
        while not handler.requested and time.monotonic() < deadline:
            time.sleep(0.01)  # Python runs signal handlers between bytecodes
        assert handler.requested and handler.should_stop(5)
        assert handler.signal_received == signal.SIGTERM
        assert calls == []  # our handler replaced the previous one, the process lives on
        handler.close()
        assert signal.getsignal(signal.SIGTERM) is previous
    finally:
        signal.signal(signal.SIGTERM, original)


# ----------------------------------------------------------------------------- two processes

TWO_PROCESSES = textwrap.dedent('''
    import os, signal, sys, time
    import jax, numpy as np
    pid, port, directory = int(sys.argv[1]), sys.argv[2], sys.argv[3]
    jax.distributed.initialize(coordinator_address=f"127.0.0.1:{port}", num_processes=2,
                               process_id=pid)
    from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
    from crossmodal.checkpointing import Checkpointer, install_preemption_handler

    mesh = Mesh(np.array(jax.devices()), ("data",))
    rows = jax.make_array_from_process_local_data(
        NamedSharding(mesh, P("data")), np.full((2, 3), pid + 1, np.float32))
    state = {"rows": rows, "rep": jax.device_put(np.arange(4, dtype=np.float32),
                                                 NamedSharding(mesh, P()))}
    target = jax.tree.map(
        lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=a.sharding), state)
    with Checkpointer(directory) as ckpt:  # constructed and called on both processes
        ckpt.save(3, state, pipeline_position=33)
        ckpt.wait_until_finished()
        restored, position, meta = ckpt.restore(target)
    local = np.asarray(restored["rows"].addressable_data(0))
    assert position == 33 and meta["process_count"] == 2
    assert (local == pid + 1).all(), local
    print("RESTORED", flush=True)

    def run(handler, killer, kill_step=4):
        for step in range(1, 2000):
            if pid == killer and step == kill_step:
                os.kill(os.getpid(), signal.SIGTERM)  # only one process gets the notice
            if handler.should_stop(step):
                return step
            time.sleep(0.02)
        return None

    with install_preemption_handler() as handler:  # JAX preemption service: sync point
        assert handler.use_sync_point
        print("SYNC_POINT_STOP", run(handler, killer=0), flush=True)
    with install_preemption_handler(use_sync_point=False) as handler:  # flag, OR over processes
        assert not handler.use_sync_point and handler.multi_process
        print("ALLGATHER_STOP", run(handler, killer=1), flush=True)
''')


def test_two_processes_checkpoint_and_stop_at_the_same_step(tmp_path):
    script = tmp_path / "two.py"
    script.write_text(TWO_PROCESSES)
    env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1",
               JAX_PLATFORMS="cpu", PYTHONPATH=PYTHONPATH)
    port = free_port()
    procs = [subprocess.Popen(["timeout", "-s", "KILL", "150", sys.executable, str(script),
                               str(i), str(port), str(tmp_path / "ckpt")],
                              env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    outs = []
    for p in procs:
        out, err = p.communicate(timeout=180)
        assert p.returncode == 0, err[-4000:]
        outs.append(dict(line.split(" ", 1) for line in out.splitlines() if " " in line))
    for key in ("SYNC_POINT_STOP", "ALLGATHER_STOP"):
        steps = {o[key] for o in outs}
        assert len(steps) == 1 and "None" not in steps, (key, outs)
    assert int(outs[0]["ALLGATHER_STOP"]) == 4  # flag raised at step 4, seen by both at once
