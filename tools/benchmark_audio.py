"""Audio-tower inference throughput: mel front end + MobileNetV3, 10 s clips/s after compilation.

    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000 MALLOC_TOP_PAD_=1073741824 \
        .venv/bin/python tools/benchmark_audio.py --widths 1.0 4.0 --batches 8

Times the public path, ``AudioEncoder.embed`` (NumPy in, NumPy out), with random weights
(speed does not depend on them). ``--train`` times a training step of the audio tower instead:
log-mel (train mode: jitter + masks) + MobileNetV3 forward and backward with batch-norm batch
statistics (``jax.grad`` of a loss on the embeddings, updated ``batch_stats``), in 10 s clips/s. Prints the settings that change the numbers
(backend, threads, allocator variables); run it on an otherwise idle machine.
"""
from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from hybrid_jax.models import audio_encoder, frontend, mobilenet

DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}


def build(width_mult: float, depthwise: str, dtype, eval_chunk: str, mel_only: bool):
    """The public inference path (``AudioEncoder.embed``) with random weights -> (variables, fn)."""
    module = mobilenet.MobileNetV3(width_mult, depthwise=depthwise, dtype=dtype)
    encoder = audio_encoder.AudioEncoder(module, mobilenet.random_variables(module),
                                         eval_chunk=eval_chunk)
    if mel_only:
        return None, lambda _, waveform: encoder.log_mel(waveform)
    return encoder.variables, lambda _, waveform: encoder.embed(waveform)


def build_train(width_mult: float, depthwise: str, dtype):
    """A jitted mel + CNN forward/backward in train mode -> (variables, fn(variables, waveform))."""
    module = mobilenet.MobileNetV3(width_mult, num_classes=0, depthwise=depthwise, dtype=dtype)
    variables = mobilenet.random_variables(module)
    mel_config = frontend.MelConfig()

    def loss(params, batch_stats, waveform, key):
        mel = frontend.log_mel(waveform, mel_config, rng=key)
        out, updates = module.apply({"params": params, "batch_stats": batch_stats}, mel,
                                    train=True, mutable=["batch_stats"])
        return jnp.mean(jnp.square(out["features"])), updates["batch_stats"]

    grad = jax.jit(jax.grad(loss, has_aux=True))
    key = jax.random.key(0)
    return variables, lambda v, waveform: grad(v["params"], v["batch_stats"], waveform, key)


def measure(forward, variables, waveform, repeats: int) -> list[float]:
    jax.block_until_ready(forward(variables, waveform))  # compile + warm up
    jax.block_until_ready(forward(variables, waveform))
    seconds = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(forward(variables, waveform))
        seconds.append(time.perf_counter() - start)
    return seconds


def gemm_gflops() -> float:
    """fp32 GEMM rate now: ~190 GFLOP/s on an idle 2-core Zen 4 here; much less means contention."""
    a = jnp.ones((1024, 1024), jnp.float32)
    matmul = jax.jit(lambda a: a @ a)
    jax.block_until_ready(matmul(a))
    start = time.perf_counter()
    for _ in range(20):
        jax.block_until_ready(matmul(a))
    return 20 * 2 * 1024**3 / (time.perf_counter() - start) / 1e9


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--widths", type=float, nargs="+", default=[0.4, 1.0, 4.0])
    parser.add_argument("--batches", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--depthwise", default="auto", choices=["auto", "shifted", "native", "fused"])
    parser.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    parser.add_argument("--eval-chunk", default="auto",
                        help='examples per network call: "auto", 0 = whole batch')
    parser.add_argument("--seconds", type=float, default=10.0, help="clip length")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--mel-only", action="store_true", help="time the front end alone")
    parser.add_argument("--train", action="store_true",
                        help="time mel + CNN forward+backward in train mode (BN batch statistics)")
    args = parser.parse_args(argv)

    print(f"backend={jax.default_backend()} devices={jax.devices()} cpu_count={os.cpu_count()} "
          f"affinity={len(os.sched_getaffinity(0))}")
    for name in ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_", "XLA_FLAGS",
                 "OMP_NUM_THREADS"):
        print(f"  {name}={os.environ.get(name, '(unset)')}")
    print(f"depthwise={mobilenet.resolve_depthwise(args.depthwise)} dtype={args.dtype} "
          f"eval_chunk={audio_encoder.resolve_eval_chunk(args.eval_chunk)} "
          f"clip={args.seconds} s repeats={args.repeats} load_average={os.getloadavg()[0]:.2f} "
          f"gemm={gemm_gflops():.0f} GFLOP/s")
    rng = np.random.default_rng(0)
    for width in args.widths:
        eval_chunk = args.eval_chunk if args.eval_chunk == "auto" else int(args.eval_chunk)
        if args.train:
            variables, forward = build_train(width, args.depthwise, DTYPES[args.dtype])
        else:
            variables, forward = build(width, args.depthwise, DTYPES[args.dtype], eval_chunk,
                                       args.mel_only)
        for batch in args.batches:
            waveform = rng.uniform(-0.5, 0.5, (batch, int(args.seconds * 32000))).astype(np.float32)
            seconds = measure(forward, variables, waveform, args.repeats)
            rates = sorted(batch / s for s in seconds)
            label = "mel only" if args.mel_only else f"mel + width {width}"
            label += " train" if args.train else ""
            print(f"{label:>18} batch {batch:3d}: {statistics.median(rates):7.1f} clips/s "
                  f"(min {rates[0]:.1f}, max {rates[-1]:.1f}; "
                  f"median {statistics.median(seconds) * 1e3:.0f} ms/batch)",
                  flush=True)
        if args.mel_only:
            break
    print(f"load_average_after={os.getloadavg()[0]:.2f} gemm_after={gemm_gflops():.0f} GFLOP/s")


if __name__ == "__main__":
    main()
