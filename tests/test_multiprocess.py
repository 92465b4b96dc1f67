"""Two processes on localhost (jax.distributed, gloo on CPU) train like one process with the same
global batch and device count: same loss curve, and their jointly written Orbax checkpoint holds
the one-process state.

The file doubles as the worker: ``python tests/test_multiprocess.py PORT NUM_PROCESSES ID OUT``.
"""
import dataclasses
import json
import os
import pathlib
import socket
import subprocess
import sys
import zlib

import jax
import ml_collections
import numpy as np
import optax
import pytest
from test_model import tiny_model  # as a script, tests/ is sys.path[0]
from test_sharding import assert_same_state

from configs import base
from hybrid_jax import distributed, sharding, steps
from hybrid_jax.checkpointing import Checkpoints
from hybrid_jax.data import pipeline
from hybrid_jax.data.records import InMemorySplit
from hybrid_jax.models import build
from hybrid_jax.models.bert import BertEncoder
from hybrid_jax.state import TrainState, init_state

HERE = pathlib.Path(__file__).resolve().parent
GLOBAL_BATCH, NUM_STEPS, TOTAL_DEVICES, L, LR = 8, 3, 4, 8, 1e-4
MESH = (("data", 2), ("fsdp", 2))  # FSDP across the two processes, batch over all four devices
# Every run compiles alike (see tests/test_sharding.py): LLVM level 0 is ~8x faster to compile.
XLA_FLAGS = "--xla_backend_optimization_level=0 --xla_force_host_platform_device_count={}"


def model_and_optimizer():
    model = tiny_model("late")  # native depthwise: faster to compile, same sharding question
    # SGD + momentum and a small step, as in tests/test_sharding.py (zero-in-theory gradients,
    # a sensitive freshly initialised model).
    model = model.clone(audio=dataclasses.replace(model.audio, depthwise="native"))
    return model, optax.sgd(LR, momentum=0.9)


def tokenize(texts: list[str]) -> dict[str, np.ndarray]:
    """Deterministic toy tokenizer: word -> 1 + crc32 % 49 (vocab 50 of the tiny BERT)."""
    ids = np.zeros((len(texts), L), np.int32)
    for row, text in enumerate(texts):
        words = [1 + zlib.crc32(w.encode()) % 49 for w in text.split()][:L]
        ids[row, : len(words)] = words
    return {"input_ids": ids, "attention_mask": (ids > 0).astype(np.int32)}


def split() -> InMemorySplit:
    rng = np.random.default_rng(0)
    audio = [(rng.standard_normal(int(rng.integers(8000, 24000))) * 3000).astype(np.int16) for _ in range(12)]
    captions = [[f"sound {i} loud", f"clip {i} quiet noise"] for i in range(12)]
    keywords = [[f"tag{i % 4}", "field"] if i % 3 else [] for i in range(12)]
    return InMemorySplit(audio, captions, keywords)


def train_curve(mesh, checkpoint_dir):
    """NUM_STEPS steps on this process's rows of each global batch; saves the state
    -> [[loss, gradient norm] per step]."""
    model, tx = model_and_optimizer()
    loader = pipeline.TrainLoader(split(), tokenize, global_batch_size=GLOBAL_BATCH, clip_seconds=0.5, seed=0)
    example = loader.batch(0)
    # The "pretrained" text tower: the same host arrays in every process (a fixed-key init).
    ids = example["query_ids"][:1]
    encoder = BertEncoder(model.text)
    bert = jax.jit(lambda: encoder.init(jax.random.key(5, impl="rbg"), ids, ids, 0 * ids, train=False))()
    built = build.Built(model, None, None, jax.device_get(bert))
    config = ml_collections.ConfigDict(
        {"train": {"seed": 0}, "mesh": {"rules": [tuple(r) for r in base.get_config().mesh.rules]}}
    )
    state, state_shardings = init_state(built, tx, example, config, mesh)
    step = steps.jit_train_step(steps.make_train_step(model, tx, lambda s: LR), state_shardings, mesh)
    iterator, spec, losses = iter(loader), sharding.batch_sharding(mesh).spec, []
    for _ in range(NUM_STEPS):
        state, metrics = step(state, pipeline.to_global(next(iterator), mesh, spec))
        losses.append([float(metrics["train/loss"]), float(metrics["train/grad_norm"])])
    checkpoints = Checkpoints(checkpoint_dir)  # every process writes its own shards
    checkpoints.save_latest(NUM_STEPS, state, {"losses": losses})
    checkpoints.wait()
    checkpoints.close()
    return losses


def worker_main(port: str, num_processes: str, process_id: str, out: str) -> None:
    """One process of the run: ``num_processes`` 1 is the single-process reference."""
    setup = distributed.initialize(f"127.0.0.1:{port}", int(num_processes), int(process_id))
    assert jax.process_count() == int(num_processes), setup
    losses = train_curve(sharding.make_mesh(MESH), out)
    if jax.process_index() == 0:
        summary = {"losses": losses, "process_count": jax.process_count(), "device_count": jax.device_count(),
                   "mode": setup.mode}
        (pathlib.Path(out) / "losses.json").write_text(json.dumps(summary))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def spawn(num_processes: int, out: pathlib.Path) -> list[subprocess.Popen]:
    out.mkdir()
    env = dict(os.environ, JAX_PLATFORMS="cpu", PYTHONPATH=str(HERE.parent),
               XLA_FLAGS=XLA_FLAGS.format(TOTAL_DEVICES // num_processes))
    # Only the arguments say who is who; no shared compilation cache between the runs.
    for var in ("HYBRID_JAX_COORDINATOR", "HYBRID_JAX_NUM_PROCESSES", "HYBRID_JAX_PROCESS_ID",
                "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID",
                "JAX_COMPILATION_CACHE_DIR"):
        env.pop(var, None)
    port = free_port()
    return [subprocess.Popen([sys.executable, __file__, str(port), str(num_processes), str(i), str(out)],
                             env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for i in range(num_processes)]


def restored_params(out: pathlib.Path, like) -> tuple[dict, dict]:
    checkpoints = Checkpoints(out)
    state, meta = checkpoints.restore("latest", like)
    checkpoints.close()
    return jax.device_get(state), meta


CLUSTER_VARS = ("HYBRID_JAX_COORDINATOR", "HYBRID_JAX_NUM_PROCESSES", "HYBRID_JAX_PROCESS_ID",
                "JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID", "SLURM_JOB_ID",
                "SLURM_NTASKS", "OMPI_COMM_WORLD_SIZE", "MEGASCALE_COORDINATOR_ADDRESS",
                "TPU_PROCESS_ADDRESSES", "TPU_WORKER_HOSTNAMES", "TPU_PROCESS_ADDRESSES_PATH", "JOBSET_NAME")


def test_resolve_from_arguments_environment_and_cluster(monkeypatch):
    for var in CLUSTER_VARS:
        monkeypatch.delenv(var, raising=False)
    assert distributed.resolve().mode == "single"
    monkeypatch.setenv("JAX_COORDINATOR_ADDRESS", "10.0.0.9:99")  # JAX's own, below ours
    monkeypatch.setenv("HYBRID_JAX_COORDINATOR", "10.0.0.1:1234")
    monkeypatch.setenv("HYBRID_JAX_NUM_PROCESSES", "4")
    monkeypatch.setenv("HYBRID_JAX_PROCESS_ID", "2")
    assert distributed.resolve() == distributed.Setup("explicit", "10.0.0.1:1234", 4, 2)
    assert distributed.resolve(process_id=3).process_id == 3  # arguments (flags) win
    assert distributed.resolve(num_processes=1).mode == "single"
    with pytest.raises(ValueError, match="not in"):
        distributed.resolve(process_id=4)
    for var in CLUSTER_VARS:
        monkeypatch.delenv(var, raising=False)
    with pytest.raises(ValueError, match="coordinator"):
        distributed.resolve(num_processes=2)  # incomplete, and no cluster to fill it in
    assert distributed.resolve(coordinator_address="auto").mode == "auto"
    assert distributed.detect_cluster({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "1"}) is None
    assert distributed.detect_cluster({"SLURM_JOB_ID": "7", "SLURM_NTASKS": "4(x2)"}) == "slurm"
    assert distributed.detect_cluster({"OMPI_COMM_WORLD_SIZE": "8"}) == "ompi"
    assert distributed.detect_cluster({"TPU_WORKER_HOSTNAMES": "h0"}) is None  # one host
    assert distributed.detect_cluster({"TPU_WORKER_HOSTNAMES": "h0,h1"}) == "tpu"
    monkeypatch.setenv("SLURM_JOB_ID", "7")
    monkeypatch.setenv("SLURM_NTASKS", "2")
    assert distributed.resolve() == distributed.Setup("slurm")  # JAX fills in all three


@pytest.mark.slow  # ~3 min on 2 loaded cores: three processes compile
def test_two_processes_match_one_process(tmp_path):
    runs = {"two": spawn(2, tmp_path / "two"), "one": spawn(1, tmp_path / "one")}
    for name, workers in runs.items():
        for i, worker in enumerate(workers):
            try:
                output, _ = worker.communicate(timeout=900)
            finally:
                worker.kill()
            assert worker.returncode == 0, f"{name}-process run, process {i} failed:\n{output[-4000:]}"
    two = json.loads((tmp_path / "two" / "losses.json").read_text())
    one = json.loads((tmp_path / "one" / "losses.json").read_text())
    assert (two["process_count"], two["device_count"], two["mode"]) == (2, TOTAL_DEVICES, "explicit")
    assert (one["process_count"], one["device_count"], one["mode"]) == (1, TOTAL_DEVICES, "single")
    two_losses, one_losses = np.array(two["losses"]), np.array(one["losses"])
    np.testing.assert_allclose(two_losses[:, 0], one_losses[:, 0], rtol=1e-5)  # the loss curve
    np.testing.assert_allclose(two_losses[:, 1], one_losses[:, 1], rtol=1e-4)  # gradient norms

    # Both checkpoints read back here (one device): the two-process one holds the same state.
    model, tx = model_and_optimizer()
    example = {k: v[:2] for k, v in pipeline.TrainLoader(split(), tokenize, global_batch_size=GLOBAL_BATCH,
                                                        clip_seconds=0.5, process_index=0,
                                                        process_count=1).batch(0).items()}
    variables = jax.eval_shape(lambda: model.init({"params": jax.random.PRNGKey(0)}, example, train=False))
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    like = TrainState(step=jax.ShapeDtypeStruct((), np.int32), params=variables["params"],
                            batch_stats=variables["batch_stats"],
                            opt_state=jax.eval_shape(tx.init, variables["params"]),
                            rng=jax.ShapeDtypeStruct((2,), np.uint32))
    like = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=device), like)
    got, got_meta = restored_params(tmp_path / "two", like)
    want, _ = restored_params(tmp_path / "one", like)
    assert got_meta["losses"] == two["losses"] and int(got.step) == NUM_STEPS
    assert_same_state(got, want, one_losses[-1, 1], "two processes")


if __name__ == "__main__":
    worker_main(*sys.argv[1:])
