"""Training: python -m hybrid_jax.train --config configs/clotho_late.py --workdir DIR [--config.x=y]

Trains the retrieval model on a device mesh, validates (mAP@10) every epoch, keeps the latest and
the best checkpoints, resumes exactly from the workdir, and finally evaluates the best checkpoint
on the test split.
"""
from __future__ import annotations

import math
import pathlib
import time

import jax
import tqdm
from absl import logging
from ml_collections import ConfigDict

from hybrid_jax import config_checks, evaluate, metrics, optim, sharding, steps
from hybrid_jax.backend import policy as backend_policy
from hybrid_jax.checkpointing import Checkpoints
from hybrid_jax.data.datasets import open_datasets
from hybrid_jax.logs import MetricsLog
from hybrid_jax.models import build
from hybrid_jax.state import abstract, abstract_state, init_state


class NonFiniteLossError(RuntimeError):
    """The loss became NaN or infinite; the last good checkpoint is left untouched."""


def train_and_evaluate(config: ConfigDict, workdir: str | pathlib.Path) -> dict:
    """Runs training and the final test evaluation; returns the test metrics."""
    config_checks.check(config, num_devices=jax.device_count(), process_count=jax.process_count())
    workdir = pathlib.Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    (workdir / "config.json").write_text(config.to_json_best_effort(indent=2) + "\n")
    mesh = sharding.make_mesh(config.mesh.shape)
    policy = backend_policy.of_mesh(mesh)  # every CPU-vs-accelerator choice, from the mesh's devices
    built = build.build(config.model, policy)
    data = open_datasets(config, built.tokenizer.tokenize)
    loader = data.train_loader
    steps_per_epoch = loader.steps_per_epoch
    total_steps = config.train.num_epochs * steps_per_epoch
    if config.train.max_steps:
        total_steps = min(total_steps, config.train.max_steps)
    tx, schedule = optim.make_optimizer(config.optim, steps_per_epoch)
    checkpoints = Checkpoints(workdir, policy=policy)
    resuming = checkpoints.latest_step() is not None
    # A resumed run restores onto the state's abstract form: its initialisation (a large program
    # of random draws) would only be overwritten.
    if resuming:
        state, state_shardings = abstract_state(built.model, tx, loader.batch(0), config, mesh)
    else:
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

    iterator = iter(loader)
    meta = {"best_map10": -1.0, "best_step": None}
    if resuming:
        state, meta = checkpoints.restore("latest", state)
        iterator.set_state(meta["data_iterator"])
        logging.info("resumed from step %d in %s", int(state.step), workdir)
    log = MetricsLog(workdir, enabled=jax.process_index() == 0)
    step = int(state.step)
    batch_spec = sharding.batch_sharding(mesh).spec
    progress = tqdm.tqdm(total=total_steps, initial=step, desc="train", disable=jax.process_index() != 0)
    window_start, window_examples = time.perf_counter(), 0
    while step < total_steps:
        batch = data.to_global(next(iterator), mesh, batch_spec)
        state, step_metrics = train_step(state, batch)
        step += 1
        window_examples += config.train.batch_size
        loss = float(step_metrics["train/loss"])  # one host sync per step: NaN must stop at its own step
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
            scalars = {k: float(v) for k, v in step_metrics.items()}
            scalars["examples_per_s"] = window_examples / max(elapsed, 1e-9)
            scalars["epoch"] = step / steps_per_epoch
            log.write(step, scalars)
            window_start, window_examples = time.perf_counter(), 0
        epoch_end = step % steps_per_epoch == 0
        if epoch_end and (step // steps_per_epoch) % config.eval.every_epochs == 0:
            result = validate(state, data.val)
            log.write(step, {f"eval/{data.val_name}/{k}": v for k, v in result.items()})
            improved = result["mAP@10"] > meta["best_map10"]
            if improved:
                meta = {**meta, "best_map10": result["mAP@10"], "best_step": step}
                checkpoints.save_best(step, state, {**meta, "data_iterator": iterator.get_state()})
            if jax.process_index() == 0:
                progress.write(f"epoch {step // steps_per_epoch:3d}  step {step:6d}  loss {loss:.4f}  "
                               f"{data.val_name} {data.val_split}: {metrics.format_line(result)}"
                               + ("  (best)" if improved else ""))
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
    if jax.process_index() == 0:
        print(f"test ({data.test_name} {data.test_split}, {which} checkpoint): {metrics.format_line(result)}"
              f"  -> {workdir / f'results_{data.test_split}.json'}")
    return result


def main(argv):
    del argv
    from absl import flags
    from ml_collections import config_flags

    from hybrid_jax import cli

    cli.quiet_terminal()
    cli.initialize_distributed()  # first, before any JAX computation
    config = flags.FLAGS.config
    workdir = pathlib.Path(flags.FLAGS.workdir or config.get("workdir") or "workdirs/run")
    log_file = cli.log_to_file(workdir / "logs" / f"train.{jax.process_index()}.log")
    if jax.process_index() == 0:
        print(f"training {config_flags.get_config_filename(flags.FLAGS['config'])} in {workdir} (logs: {log_file})")
    train_and_evaluate(config, workdir)


if __name__ == "__main__":
    from absl import app, flags

    from hybrid_jax import cli

    cli.define_config_flag()
    flags.DEFINE_string("workdir", None, "Run directory (checkpoints, logs, results); reused to resume.")
    cli.define_multihost_flags()
    flags.mark_flag_as_required("config")
    app.run(main)
