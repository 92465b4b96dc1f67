"""Training: python -m hybrid_jax.train --config configs/clotho_late.py --workdir DIR [--config.x=y]

Trains the retrieval model on a device mesh, validates (mAP@10) every epoch, keeps the latest and
the best checkpoints, resumes exactly from the workdir, and finally evaluates the best checkpoint
on the test split.
"""
from __future__ import annotations

import json
import math
import pathlib
import time

import jax
import numpy as np
import tqdm
from absl import app, flags, logging
from ml_collections import ConfigDict, config_flags

from hybrid_jax import build, distributed, evaluate, optim, sharding, steps
from hybrid_jax.checkpointing import Checkpoints, abstract
from hybrid_jax.datasets import open_datasets
from hybrid_jax.logs import MetricsLog


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is left untouched."""


def init_state(built: build.Built, tx, example_batch: dict, config: ConfigDict, mesh) -> tuple[steps.TrainState, steps.TrainState]:
    """Initialises the state directly into its shardings (shapes first, via eval_shape), then
    grafts the converted pretrained towers in. Returns (state, state_shardings)."""
    model, seed = built.model, config.train.seed
    # rbg keys for the initialisers: threefry compiles one large kernel per parameter on XLA:CPU
    # (minutes for the whole model); rbg compiles in seconds. The values are drawn replicated and
    # only then resharded, so they do not depend on the mesh.
    rngs = {name: jax.random.key(seed + i, impl="rbg") for i, name in enumerate(("params", "dropout", "augment"))}

    def init_variables():
        variables = model.init(rngs, example_batch, train=False)
        return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}

    rules = [tuple(rule) for rule in config.mesh.rules]
    var_shardings = sharding.param_shardings(jax.eval_shape(init_variables), mesh, rules)
    replicated_init = jax.jit(init_variables, out_shardings=sharding.param_shardings(0, mesh, []))()
    variables = build.load_pretrained(built, jax.device_put(replicated_init, var_shardings))
    opt_shardings = sharding.param_shardings(jax.eval_shape(tx.init, variables["params"]), mesh, rules)
    opt_state = jax.jit(tx.init, out_shardings=opt_shardings)(variables["params"])
    replicated = sharding.param_shardings(0, mesh, [])
    state = steps.TrainState(
        step=jax.device_put(np.int32(0), replicated),
        params=variables["params"],
        batch_stats=variables["batch_stats"],
        opt_state=opt_state,
        rng=jax.device_put(np.asarray(jax.random.PRNGKey(seed + 17)), replicated),
    )
    state_shardings = steps.TrainState(
        step=replicated, params=var_shardings["params"], batch_stats=var_shardings["batch_stats"],
        opt_state=opt_shardings, rng=replicated,
    )
    return state, state_shardings


def train_and_evaluate(config: ConfigDict, workdir: str | pathlib.Path) -> dict:
    """Runs training and the final test evaluation; returns the test metrics."""
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2) + "\n")
    mesh = sharding.make_mesh(config.mesh.shape)
    built = build.build(config.model)
    data = open_datasets(config, built.tokenizer.tokenize)
    loader = data.train_loader
    steps_per_epoch = loader.steps_per_epoch
    total_steps = config.train.num_epochs * steps_per_epoch
    if config.train.max_steps:
        total_steps = min(total_steps, config.train.max_steps)
    tx, schedule = optim.make_optimizer(config.optim, steps_per_epoch)
    state, state_shardings = init_state(built, tx, loader.batch(0), config, mesh)
    train_step = steps.jit_train_step(steps.make_train_step(
        built.model, tx, schedule, microbatch_size=config.train.microbatch_size,
        accumulation=config.train.accumulation, loss_impl=config.train.loss_impl, mesh=mesh), state_shardings, mesh)
    variable_shardings = {"params": state_shardings.params, "batch_stats": state_shardings.batch_stats}
    embed_items = steps.jit_embed(built.model, "embed_items", variable_shardings, mesh)
    embed_queries = steps.jit_embed(built.model, "embed_queries", variable_shardings, mesh)

    def validate(state, eval_set):
        variables = {"params": state.params, "batch_stats": state.batch_stats}
        return evaluate.evaluate_split(
            embed_items, embed_queries, variables, eval_set, batch_size=config.eval.batch_size, mesh=mesh
        )

    checkpoints = Checkpoints(workdir)
    iterator = iter(loader)
    meta = {"best_map10": -1.0, "best_step": None}
    if checkpoints.latest_step() is not None:
        state, meta = checkpoints.restore("latest", abstract(state))
        iterator.set_state(meta["data_iterator"])
        logging.info("resumed from step %d in %s", int(state.step), workdir)
    log = MetricsLog(workdir, enabled=jax.process_index() == 0)
    step = int(state.step)
    batch_spec = sharding.batch_sharding(mesh).spec
    progress = tqdm.tqdm(total=total_steps, initial=step, desc="train", disable=jax.process_index() != 0)
    window_start, window_examples = time.perf_counter(), 0
    while step < total_steps:
        batch = data.to_global(next(iterator), mesh, batch_spec)
        state, metrics = train_step(state, batch)
        step += 1
        window_examples += config.train.batch_size
        loss = float(metrics["train/loss"])  # one host sync per step: NaN must stop at its own step
        if not math.isfinite(loss):
            checkpoints.wait()
            raise NonFiniteLossError(
                f"non-finite loss ({loss}) at step {step}; stopping. The last good checkpoint in "
                f"{workdir / 'checkpoints'} is untouched (step {checkpoints.latest_step()})."
            )
        progress.update(1)
        progress.set_postfix(loss=f"{loss:.4f}")
        if step % config.train.log_every_steps == 0 or step == total_steps:
            elapsed = time.perf_counter() - window_start
            scalars = {k: float(v) for k, v in metrics.items()}
            scalars["examples_per_s"] = window_examples / max(elapsed, 1e-9)
            scalars["epoch"] = step / steps_per_epoch
            log.write(step, scalars)
            window_start, window_examples = time.perf_counter(), 0
        epoch_end = step % steps_per_epoch == 0
        if epoch_end and (step // steps_per_epoch) % config.eval.every_epochs == 0:
            result = validate(state, data.val)
            log.write(step, {f"eval/{data.val_name}/{k}": v for k, v in result.items()})
            if result["mAP@10"] > meta["best_map10"]:
                meta = {**meta, "best_map10": result["mAP@10"], "best_step": step}
                checkpoints.save_best(step, state, {**meta, "data_iterator": iterator.get_state()})
        every = config.train.checkpoint_every_steps
        if epoch_end or step == total_steps or (every and step % every == 0):
            checkpoints.save_latest(step, state, {**meta, "epoch": step / steps_per_epoch,
                                                  "data_iterator": iterator.get_state()})
        if epoch_end:
            window_start, window_examples = time.perf_counter(), 0
    progress.close()
    checkpoints.wait()
    which = "best" if checkpoints.best.latest_step() is not None else "latest"
    final, _ = checkpoints.restore(which, abstract(state))
    result = validate(final, data.test)
    result = {**result, "checkpoint": which, "split": data.test_split, "dataset": data.test_name}
    evaluate.write_results(workdir, data.test_split, result)
    log.write(step, {f"test/{data.test_name}/{k}": v for k, v in result.items() if isinstance(v, float)})
    log.close()
    checkpoints.close()
    print(json.dumps({"test": result}, indent=2))
    return result


FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file (configs/*.py).", lock_config=True)
flags.DEFINE_string("workdir", None, "Run directory (checkpoints, logs, results); reused to resume.")
flags.DEFINE_string("coordinator_address", None, "Multi-host: host:port of process 0 ('auto': JAX detects).")
flags.DEFINE_integer("num_processes", None, "Multi-host: number of processes (default: env / cluster).")
flags.DEFINE_integer("process_id", None, "Multi-host: this process's index (default: env / cluster).")


def main(argv):
    del argv
    # First, before any JAX computation; env vars and cluster detection: hybrid_jax/distributed.py.
    distributed.initialize(FLAGS.coordinator_address, FLAGS.num_processes, FLAGS.process_id)
    config = FLAGS.config
    workdir = FLAGS.workdir or config.get("workdir") or "workdirs/run"
    train_and_evaluate(config, workdir)


if __name__ == "__main__":
    flags.mark_flag_as_required("config")
    app.run(main)
