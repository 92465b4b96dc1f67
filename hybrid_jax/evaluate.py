"""Retrieval evaluation: embed every item and every query once, score, report, write DCASE CSV.

Run: python -m hybrid_jax.evaluate --config configs/clotho_late.py --workdir DIR
         [--checkpoint best|latest|PATH] [--split test] [--missing_metadata 0.3]
     python -m hybrid_jax.evaluate --config configs/clotho_late.py --model MODEL_DIR [--workdir OUT]
         (an exported model; the config gives only the data and eval settings)
"""
from __future__ import annotations

import csv
import json
import pathlib
from typing import Callable

import jax
import numpy as np
from jax.sharding import Mesh

from hybrid_jax import metrics, schema, sharding
from hybrid_jax.backend import policy as backend_policy
from hybrid_jax.data import pipeline
from hybrid_jax.data.eval_data import EvalData
from hybrid_jax.models import fusion


def _embed_batches(embed: Callable, variables, batches, keys, count: int, mesh: Mesh, transform=None) -> dict:
    """Embeds process-local batches as global arrays and returns the first ``count`` rows.

    Global batch rows are the processes' local rows in process order (``EvalData`` lays them out
    so), and the outputs are replicated, so every process gets all rows in split order."""
    spec = sharding.batch_sharding(mesh).spec
    outputs = []
    for batch in batches:
        if transform is not None:
            batch = transform(batch)
        global_batch = pipeline.to_global({k: batch[k] for k in keys}, mesh, spec)
        outputs.append(jax.device_get(embed(variables, global_batch)))
    merged = jax.tree.map(lambda *xs: np.concatenate(xs), *outputs)
    return jax.tree.map(lambda x: np.asarray(x)[:count], merged)


def evaluate_split(
    embed_items: Callable,
    embed_queries: Callable,
    variables,
    data: EvalData,
    *,
    batch_size: int,
    mesh: Mesh,
    missing_metadata: float = 0.0,
    seed: int = 0,
    return_similarity: bool = False,
):
    """Embeds every item (audio + metadata) once per metadata variant and every query once, and
    returns ``retrieval_metrics`` (plus the [Q, N] similarity when asked).

    ``missing_metadata``: the metadata of this fraction of items (chosen by ``seed``) is removed.
    ``batch_size`` must be a multiple of the device count."""
    dropped = np.zeros(data.num_clips, bool)
    if missing_metadata > 0:
        chosen = np.random.default_rng(seed).permutation(data.num_clips)[: int(round(missing_metadata * data.num_clips))]
        dropped[chosen] = True

    def drop(batch):
        keep = batch["meta_present"] & ~dropped[np.maximum(batch["item_id"], 0)]
        return {**batch, "meta_present": keep}

    queries = _embed_batches(embed_queries, variables, data.query_batches(batch_size), schema.QUERY_KEYS,
                             data.num_queries, mesh)
    num_variants = data.meta_present.shape[0]
    similarity = np.empty((data.num_queries, data.num_clips), np.float32)
    for variant in range(num_variants):
        users = data.query_variant == variant
        if not users.any():
            continue
        items = _embed_batches(embed_items, variables, data.clip_batches(batch_size, variant=variant),
                               schema.ITEM_KEYS, data.num_clips, mesh, transform=drop)
        chosen = jax.tree.map(lambda x: x[users], queries)
        similarity[users] = score(chosen, items)
    result = metrics.retrieval_metrics(similarity, data.caption_item)
    return (result, similarity) if return_similarity else result


def score(queries: dict, items: dict) -> np.ndarray:
    """Similarity [Q, N] on the host (float32); the fusion rule decides how experts combine."""
    with jax.default_device(jax.local_devices(backend="cpu")[0]):  # host memory, not the accelerator's
        return np.asarray(jax.jit(fusion.similarity)(queries, items))


def write_submission(path: pathlib.Path, captions: list[str], file_names: list[str], similarity: np.ndarray) -> None:
    """DCASE retrieval submission: ``caption,file_name_1..file_name_10`` best first; captions and
    names byte-exact; the order is the metrics' (stable descending)."""
    best = metrics.top_k(similarity, k=min(10, similarity.shape[1]))
    with open(path, "w", newline="", encoding="utf-8") as f:
        writer = csv.writer(f)
        writer.writerow(["caption"] + [f"file_name_{i}" for i in range(1, 11)])
        for caption, row in zip(captions, best):
            writer.writerow([caption] + [file_names[j] for j in row])


def write_results(workdir: pathlib.Path, split: str, results: dict) -> pathlib.Path:
    path = pathlib.Path(workdir) / f"results_{split}.json"
    path.write_text(json.dumps(results, indent=2, sort_keys=True) + "\n")
    return path


def example_batch(data: EvalData, batch_size: int) -> dict[str, np.ndarray]:
    """One batch with both item and query fields (to initialise the model's shapes)."""
    items = next(data.clip_batches(batch_size))
    queries = next(data.query_batches(batch_size))
    return {**{k: items[k] for k in schema.ITEM_KEYS}, **{k: queries[k] for k in schema.QUERY_KEYS},
            "item_id": np.maximum(items["item_id"], 0)}


def load_trained(config, workdir: str | pathlib.Path, checkpoint: str, example: dict[str, np.ndarray], built=None):
    """Restores ``checkpoint`` ("best", "latest" or a step directory) of ``workdir`` into the model
    of ``config`` (``built`` if already built) -> (variables, embed_items, embed_queries, mesh)."""
    # heavy imports only on the CLI paths
    from hybrid_jax import checkpointing, optim, steps
    from hybrid_jax.models import build
    from hybrid_jax.state import abstract_state

    mesh = sharding.make_mesh(config.mesh.shape)
    policy = backend_policy.of_mesh(mesh)
    built = built or build.build(config.model, policy)
    tx, _ = optim.make_optimizer(config.optim, steps_per_epoch=1)
    # The state's shapes and shardings only: nothing is initialised or compiled before the restore,
    # and of the checkpoint only the variables are read (not the optimizer's moments).
    state, state_shardings = abstract_state(built.model, tx, example, config, mesh)
    variables, _ = checkpointing.restore_variables(
        workdir, checkpoint, {"params": state.params, "batch_stats": state.batch_stats})
    shardings = {"params": state_shardings.params, "batch_stats": state_shardings.batch_stats}
    embed_items = steps.jit_embed(built.model, "embed_items", shardings, mesh)
    embed_queries = steps.jit_embed(built.model, "embed_queries", shardings, mesh)
    return variables, embed_items, embed_queries, mesh


def run(config, workdir: str | pathlib.Path | None, checkpoint: str = "best", split: str | None = None,
        missing_metadata: float | None = None, model: str | pathlib.Path | None = None) -> dict:
    """Restores a checkpoint of ``workdir`` (or loads the exported ``model`` directory; then
    ``config.model`` is not used and ``workdir`` defaults to the model directory) and evaluates it
    on ``split`` (default: the config's test split); writes ``results_<split>.json`` and the DCASE
    CSV ``submission_<split>.csv`` into ``workdir``."""
    from hybrid_jax.data.datasets import open_eval_split

    workdir = pathlib.Path(workdir or model)
    split = split or config.data.test_split
    missing = config.eval.missing_metadata if missing_metadata is None else missing_metadata
    if model is not None:
        from hybrid_jax.inference import load_model

        exported = load_model(model)
        name, data = open_eval_split(config, exported.tokenizer.tokenize, split)
        variables, mesh = exported.variables, exported.mesh
        embed_items, embed_queries = exported.embed_items_fn, exported.embed_queries_fn
        checkpoint = str(model)
    else:
        from hybrid_jax.models import build

        built = build.build(config.model, backend_policy.of_mesh(sharding.make_mesh(config.mesh.shape)))
        name, data = open_eval_split(config, built.tokenizer.tokenize, split)
        variables, embed_items, embed_queries, mesh = load_trained(
            config, workdir, checkpoint, example_batch(data, config.eval.batch_size), built
        )
    result, similarity = evaluate_split(
        embed_items, embed_queries, variables, data, batch_size=config.eval.batch_size, mesh=mesh,
        missing_metadata=missing, seed=config.train.seed, return_similarity=True,
    )
    result = {**result, "checkpoint": checkpoint, "split": split, "dataset": name, "missing_metadata": missing,
              "num_queries": data.num_queries, "num_items": data.num_clips}
    if jax.process_index() == 0:
        workdir.mkdir(parents=True, exist_ok=True)
        write_results(workdir, split, result)
        write_submission(workdir / f"submission_{split}.csv", data.captions, data.file_names, similarity)
    return result


def main(argv):
    del argv
    from absl import app, flags

    from hybrid_jax import cli

    f = flags.FLAGS
    if not f.workdir and not f.model:
        raise app.UsageError("give --workdir (a training run) or --model (an exported model directory)")
    cli.quiet_terminal()
    cli.initialize_distributed()
    workdir = pathlib.Path(f.workdir or f.model)
    cli.log_to_file(workdir / "logs" / f"evaluate.{jax.process_index()}.log")
    result = run(f.config, workdir, f.checkpoint, f.split, f.missing_metadata, model=f.model)
    if jax.process_index() == 0:
        what = f"model {f.model}" if f.model else f"{f.checkpoint} checkpoint"
        print(f"{result['dataset']} {result['split']} ({what}, {result['num_queries']} "
              f"queries, {result['num_items']} items): {metrics.format_line(result)}")
        split = result["split"]
        print(f"wrote {workdir / f'results_{split}.json'} and {workdir / f'submission_{split}.csv'}")


if __name__ == "__main__":
    from absl import app, flags

    from hybrid_jax import cli

    cli.define_config_flag("The config the model was trained with.")
    flags.DEFINE_string("workdir", None, "The training run's directory (with --model: where results go).")
    flags.DEFINE_string("checkpoint", "best", "best, latest, or a checkpoint step directory.")
    flags.DEFINE_string("model", None, "An exported model directory to evaluate instead of a checkpoint.")
    flags.DEFINE_string("split", None, "Split to evaluate (default: the config's test split).")
    flags.DEFINE_float("missing_metadata", None, "Remove the metadata of this fraction of items.")
    cli.define_multihost_flags()
    flags.mark_flags_as_required(["config"])
    app.run(main)
