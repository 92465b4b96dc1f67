"""The training state: what it holds, how it is initialised into its shardings, its abstract form."""
from __future__ import annotations

from typing import Any

import flax.struct
import jax
import numpy as np
from ml_collections import ConfigDict

from hybrid_jax import sharding
from hybrid_jax.backend import policy as backend_policy
from hybrid_jax.models import build


class TrainState(flax.struct.PyTreeNode):
    """Everything a resumed run needs besides the data iterator (kept in checkpoint meta)."""

    step: jax.Array  # int32 scalar: optimizer steps taken
    params: Any
    batch_stats: Any  # BN running statistics of the audio CNN ({} without an audio tower)
    opt_state: Any
    rng: jax.Array  # uint32 [2] base key; step keys are fold_in(rng, step), so resume is exact


def _initializer(model, seed: int, policy: backend_policy.Policy):
    """batch -> {"params", "batch_stats"}: the model's initial variables (eval-mode init)."""
    # The RNG implementation is the policy's: rbg on CPU, where threefry compiles one large kernel
    # per parameter (minutes for the whole model). The values are drawn replicated and only then
    # resharded, so they do not depend on the mesh.
    rngs = {name: jax.random.key(seed + i, impl=policy.init_rng_impl)
            for i, name in enumerate(("params", "dropout", "augment"))}

    def init_variables(example_batch):
        variables = model.init(rngs, example_batch, train=False)
        return {"params": variables["params"], "batch_stats": variables.get("batch_stats", {})}

    return init_variables


def _shardings(variable_shapes, tx, config: ConfigDict, mesh):
    """(variable shardings, optimizer-state shapes, their shardings) by the config's FSDP rules."""
    rules = [tuple(rule) for rule in config.mesh.rules]
    var_shardings = sharding.param_shardings(variable_shapes, mesh, rules)
    opt_shapes = jax.eval_shape(tx.init, variable_shapes["params"])
    return var_shardings, opt_shapes, sharding.param_shardings(opt_shapes, mesh, rules)


def _state_shardings(var_shardings, opt_shardings, mesh) -> TrainState:
    replicated = sharding.param_shardings(0, mesh, [])
    return TrainState(step=replicated, params=var_shardings["params"],
                      batch_stats=var_shardings["batch_stats"], opt_state=opt_shardings,
                      rng=replicated)


def init_state(built: build.Built, tx, example_batch: dict, config: ConfigDict, mesh) -> tuple[TrainState, TrainState]:
    """Initialises the state directly into its shardings (shapes first, via eval_shape), then
    grafts the converted pretrained towers in. Returns (state, state_shardings)."""
    seed = config.train.seed
    initializer = _initializer(built.model, seed, backend_policy.of_mesh(mesh))
    init_variables = lambda: initializer(example_batch)  # noqa: E731  (the batch: constants)
    var_shardings, _, opt_shardings = _shardings(jax.eval_shape(init_variables), tx, config, mesh)
    replicated_init = jax.jit(init_variables, out_shardings=sharding.param_shardings(0, mesh, []))()
    variables = build.load_pretrained(built, jax.device_put(replicated_init, var_shardings))
    opt_state = jax.jit(tx.init, out_shardings=opt_shardings)(variables["params"])
    replicated = sharding.param_shardings(0, mesh, [])
    state = TrainState(
        step=jax.device_put(np.int32(0), replicated),
        params=variables["params"],
        batch_stats=variables["batch_stats"],
        opt_state=opt_state,
        rng=jax.device_put(np.asarray(jax.random.PRNGKey(seed + 17)), replicated),
    )
    return state, _state_shardings(var_shardings, opt_shardings, mesh)


def abstract_state(model, tx, example_batch: dict, config: ConfigDict, mesh) -> tuple[TrainState, TrainState]:
    """The state ``init_state`` would make, as ShapeDtypeStructs with their shardings: nothing is
    allocated or computed (planning a run for devices this host does not have).
    ``example_batch`` may hold ShapeDtypeStructs. Returns (abstract state, state_shardings)."""
    initializer = _initializer(model, config.train.seed, backend_policy.of_mesh(mesh))
    variable_shapes = jax.eval_shape(initializer, example_batch)
    var_shardings, opt_shapes, opt_shardings = _shardings(variable_shapes, tx, config, mesh)
    shardings = _state_shardings(var_shardings, opt_shardings, mesh)
    key = jax.eval_shape(lambda: jax.random.PRNGKey(0))
    shapes = TrainState(step=jax.ShapeDtypeStruct((), np.int32), params=variable_shapes["params"],
                        batch_stats=variable_shapes["batch_stats"], opt_state=opt_shapes, rng=key)
    with_sharding = lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)  # noqa: E731
    return jax.tree.map(with_sharding, shapes, shardings), shardings


def abstract(tree: Any) -> Any:
    """ShapeDtypeStructs (with shardings) of a tree of arrays, for restoring onto that layout."""
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=getattr(x, "sharding", None)), tree)
