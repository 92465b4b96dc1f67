"""The training state: what it holds, how it is initialised into its shardings, its abstract form."""
from __future__ import annotations

from typing import Any

import flax.struct
import jax
import numpy as np
from ml_collections import ConfigDict

from hybrid_jax import sharding
from hybrid_jax.models import build


class TrainState(flax.struct.PyTreeNode):
    """Everything a resumed run needs besides the data iterator (kept in checkpoint meta)."""

    step: jax.Array  # int32 scalar: optimizer steps taken
    params: Any
    batch_stats: Any  # BN running statistics of the audio CNN ({} without an audio tower)
    opt_state: Any
    rng: jax.Array  # uint32 [2] base key; step keys are fold_in(rng, step), so resume is exact


def init_state(built: build.Built, tx, example_batch: dict, config: ConfigDict, mesh) -> tuple[TrainState, TrainState]:
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
    state = TrainState(
        step=jax.device_put(np.int32(0), replicated),
        params=variables["params"],
        batch_stats=variables["batch_stats"],
        opt_state=opt_state,
        rng=jax.device_put(np.asarray(jax.random.PRNGKey(seed + 17)), replicated),
    )
    state_shardings = TrainState(
        step=replicated, params=var_shardings["params"], batch_stats=var_shardings["batch_stats"],
        opt_state=opt_shardings, rng=replicated,
    )
    return state, state_shardings


def abstract(tree: Any) -> Any:
    """ShapeDtypeStructs (with shardings) of a tree of arrays, for restoring onto that layout."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree)
