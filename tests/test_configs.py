"""Every config passes the config checks, and each paper row states its audio tokens and pooling
layers in its docstring as its code sets them (the paper's "multiple" layers: at least 2)."""
import importlib
import pathlib
import re

import pytest

from hybrid_jax import config_checks

CONFIGS = sorted(p.stem for p in (pathlib.Path(__file__).parents[1] / "configs").glob("*.py")
                 if p.stem not in ("__init__", "base"))


@pytest.mark.parametrize("name", CONFIGS)
def test_config_is_consistent(name):
    module = importlib.import_module(f"configs.{name}")
    config = module.get_config()
    config_checks.check(config)
    if "Paper:" not in module.__doc__:
        return
    stated = re.search(r'Model: "(\w+)" audio tokens .*? and (\d+) pooling', " ".join(module.__doc__.split()))
    assert stated, f"configs/{name}.py does not state its audio tokens and pooling layers"
    assert (config.model.audio.tokens, config.model.pooling.num_layers) == (stated[1], int(stated[2]))
    assert config.model.pooling.num_layers >= 2
