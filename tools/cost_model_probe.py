"""What XLA's TPU cost model charges, on small programs compiled for one chip of a TPU slice.

    python tools/cost_model_probe.py [--chip v5p] [--batch 48]

Prints, per probe, the cost model's time (``optimal_seconds``) next to the two bounds a roofline
would give: bytes accessed / HBM bandwidth and FLOPs / bf16 peak. The probes:

* a depthwise 3 x 3 conv + ReLU at a block-3 shape of mn40 ([batch, 250, 32, 288], bfloat16),
  forward and forward + backward, as the TPU policy's fused shifted sum and as XLA's grouped
  convolution, next to a ReLU alone (one read, one write): whether the cost model charges the
  fused kernels' vector-unit arithmetic or only their HBM traffic;
* 50 chained batch statistics over a data-parallel batch (50 small all-reduces, as the batch
  norms of one step): what a collective costs in the model;
* 100 derivations of a PRNG key (Flax's ``make_rng`` per dropout layer): what the thousands of
  scalar threefry ops of a train step cost in the model.

``docs/tpu_efficiency.md`` records the output (tenth session).
"""
from __future__ import annotations

import jax
import jax.numpy as jnp
from absl import app, flags
from jax.sharding import NamedSharding
from jax.sharding import PartitionSpec as P

from hybrid_jax import hlo, plan, sharding
from hybrid_jax.backend import depthwise

FLAGS = flags.FLAGS
TOPOLOGIES = {"v4": "v4:2x2x1", "v5e": "v5e:2x2", "v5p": "v5p:2x2x1", "v6e": "v6e:2x2"}


def measure(fn, *args) -> dict:
    """The cost analysis of ``fn`` compiled for the arguments' (compile-only) devices."""
    compiled = jax.jit(fn).lower(*args).compile()
    cost = hlo.cost(compiled)
    return {"seconds": cost.get("optimal_seconds"), "bytes": cost.get("bytes accessed", 0.0),
            "flops": cost.get("flops", 0.0)}


def _native(x, k):
    return jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                        feature_group_count=x.shape[-1])


def _relu_sum(conv):
    return lambda x, k: jax.nn.relu(conv(x, k)).astype(jnp.float32).sum()


def depthwise_probes(device, batch: int) -> dict:
    one = jax.sharding.SingleDeviceSharding(device)
    x = jax.ShapeDtypeStruct((batch, 250, 32, 288), jnp.bfloat16, sharding=one)
    k = jax.ShapeDtypeStruct((3, 3, 1, 288), jnp.bfloat16, sharding=one)
    fused = _relu_sum(lambda x, k: depthwise.fused_conv(x, k, 1))
    native = _relu_sum(_native)
    return {
        "relu alone": measure(lambda x, k: jax.nn.relu(x).astype(jnp.float32).sum(), x, k),
        "fused depthwise, forward": measure(fused, x, k),
        "grouped conv, forward": measure(native, x, k),
        "fused depthwise, forward + backward": measure(jax.grad(fused, argnums=(0, 1)), x, k),
        "grouped conv, forward + backward": measure(jax.grad(native, argnums=(0, 1)), x, k),
    }


def statistics_probe(devices, count: int = 50) -> dict:
    mesh = sharding.make_mesh((("data", len(devices)),), devices)
    x = jax.ShapeDtypeStruct((len(devices) * 1024, 256), jnp.float32, sharding=NamedSharding(mesh, P("data")))

    def chain(x):
        for _ in range(count):
            x = jnp.tanh(x - x.mean(axis=0))  # a batch statistic: one small all-reduce
        return x

    return {f"{count} batch statistics (all-reduces)": measure(chain, x),
            "1 batch statistic": measure(lambda x: jnp.tanh(x - x.mean(axis=0)), x)}


def key_probe(device, count: int = 100) -> dict:
    one = jax.sharding.SingleDeviceSharding(device)
    key = jax.ShapeDtypeStruct((2,), jnp.uint32, sharding=one)
    x = jax.ShapeDtypeStruct((1024, 1024), jnp.float32, sharding=one)

    def derive(key, x, n):
        key = jax.random.wrap_key_data(key)
        for i in range(n):
            key = jax.random.fold_in(key, i)
            x = x + jax.random.key_data(key)[0].astype(jnp.float32)
        return x

    return {"no key derivation": measure(lambda k, x: derive(k, x, 0), key, x),
            f"{count} key derivations": measure(lambda k, x: derive(k, x, count), key, x)}


def main(argv):
    del argv
    devices, chip = plan.target(TOPOLOGIES[FLAGS.chip])
    rows = {**depthwise_probes(devices[0], FLAGS.batch), **statistics_probe(devices), **key_probe(devices[0])}
    print(f"{'probe (' + FLAGS.chip + ')':40s} {'cost model':>11s} {'GB':>7s} {'GB / HBM':>9s} {'GFLOP':>8s} {'/ peak':>8s}")
    for name, r in rows.items():
        seconds = "no time" if r["seconds"] is None else f"{r['seconds'] * 1e3:.4f} ms"
        print(f"{name:40s} {seconds:>11s} {r['bytes'] / 1e9:7.3f} {r['bytes'] / (chip.hbm_gbps * 1e9) * 1e3:6.4f} ms"
              f" {r['flops'] / 1e9:8.2f} {r['flops'] / (chip.peak_bf16_tflops * 1e12) * 1e3:6.4f} ms")


if __name__ == "__main__":
    flags.DEFINE_enum("chip", "v5p", list(TOPOLOGIES), "TPU generation (one chip of its 4-chip slice).")
    flags.DEFINE_integer("batch", 48, "Windows in the depthwise probe (16 pairs per chip x 3 windows).")
    app.run(main)
