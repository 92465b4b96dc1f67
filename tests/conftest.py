"""Test set-up: 8 emulated CPU devices (set before jax is imported) so sharded code always runs."""
import os

os.environ["XLA_FLAGS"] = (
    os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import tempfile  # noqa: E402

# Hermetic caches: the converted MiniLM and XLA's compiled programs live in a per-run temp dir
# (the persistent compilation cache makes the repeated train runs of the resume tests cheap).
# One dir for the whole run: made by the first process that loads this file (pytest-xdist's
# controller), inherited through the environment by the workers and the commands they run, so a
# program compiled in one process is not compiled again in another.
_CACHE = os.environ.get("HYBRID_JAX_TEST_SESSION_CACHE") or tempfile.mkdtemp(prefix="hybrid_jax_test_cache_")
os.environ["HYBRID_JAX_TEST_SESSION_CACHE"] = _CACHE
os.environ["HYBRID_JAX_CACHE"] = _CACHE
os.environ["JAX_COMPILATION_CACHE_DIR"] = os.path.join(_CACHE, "xla")
os.environ["JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS"] = "0"
os.environ["JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES"] = "0"

import pathlib  # noqa: E402

import pytest  # noqa: E402

FIXTURES = pathlib.Path(__file__).parent / "fixtures"


# The suite runs in two processes, a module to each (pyproject: -n 2 --dist loadfile
# --no-loadscope-reorder); modules are handed out in collection order, so the modules of many
# minutes go first and the short ones fill in around them (longest first, measured on 2 cores).
LONGEST_FIRST = ("test_train.py", "test_readme_demo.py", "test_readme_commands.py", "test_readme_plans.py",
                 "test_gradcache.py", "test_model.py", "test_tpu_plan.py", "test_sharding.py",
                 "test_multiprocess.py", "test_mobilenet.py", "test_search.py", "test_configs.py",
                 "test_backend_policy.py", "test_inference.py", "test_salsa_parity.py", "test_model_dir.py",
                 "test_serve.py")


def pytest_collection_modifyitems(items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: test order kept


@pytest.fixture(scope="session")
def fixtures_dir() -> pathlib.Path:
    return FIXTURES
