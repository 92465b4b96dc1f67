"""Text-encoder throughput (sentences/s): MiniLM, bert-base and bert-large shapes, float32 and bf16.

    MALLOC_MMAP_MAX_=0 MALLOC_TRIM_THRESHOLD_=100000000000 MALLOC_TOP_PAD_=1073741824 \
        python tools/benchmark_text.py [--models minilm,base,large] [--dtypes float32,bfloat16]

Times the jitted eval-mode forward (batch 64 x 32 tokens by default) after compilation and
warm-up, and prints the median with the min-max spread; MiniLM uses its real weights (the offline
package), base/large random weights of the published shapes. Also prints the accuracy cost of bf16:
the max and mean absolute difference of MiniLM's final [CLS] embeddings against float32.
The malloc settings matter on these VMs (see docs); the script prints what it runs under.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np

from hybrid_jax.convert import bert as convert_bert
from hybrid_jax.models import text
from hybrid_jax.models.bert import BertConfig, BertEncoder

SHAPES = {  # HF configs of the published checkpoints (the fields BertConfig reads)
    "base": dict(
        vocab_size=30522,
        hidden_size=768,
        num_hidden_layers=12,
        num_attention_heads=12,
        intermediate_size=3072,
    ),
    "large": dict(
        vocab_size=30522,
        hidden_size=1024,
        num_hidden_layers=24,
        num_attention_heads=16,
        intermediate_size=4096,
    ),
}
MALLOC_VARS = ("MALLOC_MMAP_MAX_", "MALLOC_TRIM_THRESHOLD_", "MALLOC_TOP_PAD_")
SUBJECTS = ["a dog", "rain", "a car", "birds", "a crowd", "the wind", "an engine", "a child"]
ACTIONS = [
    "barks loudly",
    "falls on a tin roof",
    "passes by on a wet street",
    "chirp in the trees",
    "cheers in a stadium",
    "blows through the leaves",
    "hums steadily",
    "laughs and shouts",
]


def print_settings() -> None:
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    print(f"jax {jax.__version__}, backend {jax.default_backend()}, devices {jax.devices()}")
    print(f"cpu: {platform.processor() or platform.machine()}, usable cores: {threads}")
    print(f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r}")
    for name in MALLOC_VARS:
        print(f"{name}={os.environ.get(name, '(unset)')}")
    if not all(name in os.environ for name in MALLOC_VARS):
        print("note: malloc settings unset; the reference figures were measured with them")


def captions(count: int) -> list[str]:
    """Deterministic caption-like sentences of varied length."""
    rng = np.random.default_rng(0)
    out = []
    for _ in range(count):
        parts = [f"{rng.choice(SUBJECTS)} {rng.choice(ACTIONS)}" for _ in range(rng.integers(1, 4))]
        out.append(", then ".join(parts).capitalize() + ".")
    return out


def load_minilm() -> tuple[BertConfig, dict]:
    folder = text.minilm_package_dir()
    config = BertConfig.from_hf(json.loads((folder / "config.json").read_text()))
    variables = convert_bert.convert_state_dict(
        convert_bert.read_checkpoint(folder), config
    ).variables
    variables["params"].pop("pooler", None)
    return config, jax.tree.map(jnp.asarray, variables)


def random_model(shape: dict) -> tuple[BertConfig, dict]:
    config = BertConfig(**shape)
    ids = jnp.zeros((1, 8), jnp.int32)
    init = jax.jit(lambda key: BertEncoder(config).init(key, ids, ids, train=False))
    return config, init(jax.random.key(0))


def forward_fn(config: BertConfig, dtype):
    module = BertEncoder(config, dtype=dtype)
    return jax.jit(
        lambda v, ids, mask: module.apply(v, ids, mask, train=False)["last_hidden_state"]
    )


def throughput(forward, variables, batch, seconds: float, min_repeats: int) -> dict[str, float]:
    """Sentences/s of ``forward`` (compiled and warmed up first): median, min, max over repeats."""
    start = time.perf_counter()
    jax.block_until_ready(forward(variables, *batch))
    compile_s = time.perf_counter() - start
    jax.block_until_ready(forward(variables, *batch))  # warm-up: first-touch allocations
    times: list[float] = []
    deadline = time.perf_counter() + seconds
    while len(times) < min_repeats or time.perf_counter() < deadline:
        start = time.perf_counter()
        jax.block_until_ready(forward(variables, *batch))
        times.append(time.perf_counter() - start)
    rates = batch[0].shape[0] / np.asarray(times)
    return dict(
        median=float(np.median(rates)),
        low=float(rates.min()),
        high=float(rates.max()),
        repeats=len(times),
        compile_s=compile_s,
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--models", default="minilm,base,large")
    parser.add_argument("--dtypes", default="float32,bfloat16")
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--length", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=10.0, help="timing budget per setting")
    parser.add_argument("--min-repeats", type=int, default=3)
    args = parser.parse_args(argv)
    print_settings()

    tokenizer = text.Tokenizer.from_pretrained(text.minilm_package_dir(), max_length=args.length)
    tokens = tokenizer.tokenize(captions(args.batch))
    batch = (jnp.asarray(tokens["input_ids"]), jnp.asarray(tokens["attention_mask"]))
    print(f"batch {args.batch} x {args.length} tokens ({tokens['attention_mask'].mean():.0%} real)")

    for name in args.models.split(","):
        config, variables = load_minilm() if name == "minilm" else random_model(SHAPES[name])
        cls = {}
        for dtype_name in args.dtypes.split(","):
            forward = forward_fn(config, jnp.dtype(dtype_name))
            r = throughput(forward, variables, batch, args.seconds, args.min_repeats)
            print(
                f"{name:7s} {dtype_name:9s} {r['median']:8.1f} sentences/s "
                f"(min {r['low']:.1f}, max {r['high']:.1f}, {r['repeats']} runs, "
                f"compile {r['compile_s']:.1f} s)",
                flush=True,
            )
            if name == "minilm":
                cls[dtype_name] = np.asarray(forward(variables, *batch)[:, 0], np.float32)
        if "float32" in cls and "bfloat16" in cls:
            diff = np.abs(cls["bfloat16"] - cls["float32"])
            print(
                f"minilm  bf16 vs float32 [CLS]: max abs diff {diff.max():.4f}, "
                f"mean {diff.mean():.5f} (|[CLS]| mean {np.abs(cls['float32']).mean():.3f})"
            )
        del variables


if __name__ == "__main__":
    main()
