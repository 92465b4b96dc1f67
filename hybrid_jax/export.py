"""Export a trained run as a model directory that needs nothing else: ``hybrid_jax.load_model(OUT)``.

Run: python -m hybrid_jax.export --config configs/demo.py --workdir workdirs/demo \\
         [--checkpoint best|latest|PATH] --out models/demo

``best`` falls back to ``latest`` when the run has no best checkpoint (shorter than one
evaluation), as training's final test does. Only the parameters and batch statistics are restored
(never the optimizer state); the model is
written computing in float32 (``load_model(..., dtype="bfloat16")`` changes that on accelerators),
with the tokenizer files, ``segment_seconds`` = the config's clip length (long recordings are
embedded in segments of that length) and a model card: the training data, the config file and
its values, the checkpoint's step, the test metrics of every ``results_*.json`` in the workdir,
the date and the package version.
"""
from __future__ import annotations

import json
import pathlib

import jax
import jax.numpy as jnp

from hybrid_jax import checkpointing, model_dir, schema


def export(config, workdir: str | pathlib.Path, out: str | pathlib.Path, checkpoint: str = "best",
           config_file: str | None = None) -> pathlib.Path:
    """Writes the model directory ``out`` from ``checkpoint`` of ``workdir`` (trained with ``config``)."""
    from hybrid_jax.models import build

    workdir = pathlib.Path(workdir)
    built = build.build(config.model)
    model = built.model.clone(dtype=jnp.float32)
    example = schema.zeros(schema.TRAIN_FIELDS, 1, schema.num_samples(config.data.clip_seconds),
                           built.tokenizer.max_length)
    host = jax.sharding.SingleDeviceSharding(jax.local_devices(backend="cpu")[0])

    def init():
        keys = {name: jax.random.key(0) for name in ("params", "dropout", "augment")}
        variables = model.init(keys, example, train=False)
        return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}

    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=host), jax.eval_shape(init))
    try:
        variables, meta = checkpointing.restore_variables(workdir, checkpoint, abstract)
    except FileNotFoundError:
        if checkpoint != "best":
            raise
        # A run shorter than one evaluation has no best checkpoint; training tested its latest too.
        checkpoint = "latest"
        variables, meta = checkpointing.restore_variables(workdir, checkpoint, abstract)
    metrics = {path.stem.removeprefix("results_"): json.loads(path.read_text())
               for path in sorted(workdir.glob("results_*.json"))}
    data = config.data
    card = {
        "training_data": {"dataset": data.name, "extra_train": list(data.extra_train), "metadata": data.metadata,
                          "train_split": data.train_split, "clip_seconds": data.clip_seconds,
                          "synthetic": bool(data.synthetic)},
        "config_file": config_file,
        "config": json.loads(config.to_json_best_effort()),
        "checkpoint": {"which": checkpoint, "step": meta["step"], "epoch": meta.get("epoch"),
                       "best_map10": meta.get("best_map10"), "workdir": str(workdir.absolute())},
        "metrics": metrics,
    }
    return model_dir.save(out, model, jax.device_get(variables), build.text_checkpoint_dir(config.model.text.checkpoint),
                          max_length=built.tokenizer.max_length, card=card, segment_seconds=data.clip_seconds)


def main(argv):
    del argv
    from absl import flags
    from ml_collections import config_flags

    from hybrid_jax import cli

    f = flags.FLAGS
    cli.quiet_terminal()
    cli.log_to_file(pathlib.Path(f.workdir) / "logs" / "export.log")
    out = export(f.config, f.workdir, f.out, f.checkpoint, config_flags.get_config_filename(f["config"]))
    card = json.loads((out / model_dir.CARD_FILE).read_text())
    which = card["checkpoint"]["which"]
    tests = ", ".join(f"{split} mAP@10 {m['mAP@10']:.3f}" for split, m in card["metrics"].items() if "mAP@10" in m)
    print(f"exported the {which} checkpoint (step {card['checkpoint']['step']}) of {f.workdir} -> {out}"
          + (f" ({tests})" if tests else "") + f"; load it with hybrid_jax.load_model({str(out)!r})")


if __name__ == "__main__":
    from absl import app, flags

    from hybrid_jax import cli

    cli.define_config_flag("The config the model was trained with.")
    flags.DEFINE_string("workdir", None, "The training run's directory.")
    flags.DEFINE_string("checkpoint", "best", "best, latest, or a checkpoint step directory.")
    flags.DEFINE_string("out", None, "The model directory to write.")
    flags.mark_flags_as_required(["config", "workdir", "out"])
    app.run(main)
