"""Test set-up: 8 emulated CPU devices (set before jax is imported) so sharded code always runs."""
import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import tempfile  # noqa: E402

# Hermetic caches: the converted MiniLM and XLA's compiled programs live in a per-run temp dir
# (the persistent compilation cache makes the repeated train runs of the resume tests cheap).
_CACHE = tempfile.mkdtemp(prefix="hybrid_jax_test_cache_")
os.environ["HYBRID_JAX_CACHE"] = _CACHE
os.environ["JAX_COMPILATION_CACHE_DIR"] = os.path.join(_CACHE, "xla")
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"

import pathlib  # noqa: E402

import pytest  # noqa: E402

FIXTURES = pathlib.Path(__file__).parent / "fixtures"


@pytest.fixture(scope="session")
def fixtures_dir() -> pathlib.Path:
    return FIXTURES
