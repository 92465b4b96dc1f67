"""Contradictory or unknown settings fail before any work starts, naming every offending key."""
import importlib
import pathlib

import pytest

from configs import base
from hybrid_jax import config_checks
from hybrid_jax.config_checks import ConfigError

CONFIGS = sorted(p.stem for p in (pathlib.Path(__file__).parents[1] / "configs").glob("*.py")
                 if p.stem not in ("__init__",))


@pytest.mark.parametrize("name", CONFIGS)
def test_every_shipped_config_passes(name):
    config = importlib.import_module(f"configs.{name}").get_config()
    config_checks.check(config, num_devices=8)


def test_dataset_names_match_the_builders():
    from hybrid_jax.data.prepare import preparation

    assert set(config_checks.DATASETS) == set(preparation.BUILDERS)


def _config(**overrides):
    config = base.get_config()
    for key, value in overrides.items():
        node = config
        *parents, leaf = key.split(".")
        for part in parents:
            node = node[part]
        node[leaf] = value
    return config


@pytest.mark.parametrize("overrides, keys", [
    ({"model.fusion.mode": "late", "data.metadata": "none"}, ["model.fusion.mode", "data.metadata"]),
    ({"model.fusion.mode": "mid", "data.metadata": "none"}, ["model.fusion.mode", "data.metadata"]),
    ({"model.fusion.mode": "metadata_only", "data.metadata": "none"}, ["model.fusion.mode"]),
    ({"model.fusion.mode": "mid", "train.loss_impl": "ring"}, ["train.loss_impl", "model.fusion.mode"]),
    ({"data.name": "clothoo"}, ["data.name = 'clothoo'"]),
    ({"data.extra_train": ("audiocaps", "freesound")}, ["data.extra_train[1]"]),
    ({"data.eval_name": "esc50"}, ["data.eval_name"]),
    ({"data.metadata": "labels"}, ["data.metadata = 'labels'"]),
    ({"model.fusion.mode": "early"}, ["model.fusion.mode = 'early'"]),
    ({"model.pooling.num_heads": 5}, ["model.pooling.dim", "model.pooling.num_heads"]),
    ({"train.batch_size": 12}, ["train.batch_size = 12", "8 devices"]),
    ({"train.batch_size": 32, "train.microbatch_size": 12}, ["train.microbatch_size = 12"]),
    ({"mesh.shape": (("data", 3), ("fsdp", -1))}, ["mesh.shape"]),
    ({"mesh.shape": (("data", 2), ("fsdp", 2))}, ["needs 4 devices"]),
])
def test_contradictions_fail_naming_the_keys(overrides, keys):
    config = _config(**overrides)
    with pytest.raises(ConfigError) as error:
        config_checks.check(config, num_devices=8)
    for key in keys:
        assert key in str(error.value)


def test_all_problems_in_one_message():
    config = _config(**{"model.fusion.mode": "late", "data.metadata": "none", "data.name": "x",
                        "train.batch_size": 12})
    with pytest.raises(ConfigError, match="3 problem") as error:
        config_checks.check(config, num_devices=8)
    assert "data.name" in str(error.value) and "train.batch_size" in str(error.value)


def test_process_count_must_divide_the_batch():
    config = _config(**{"train.batch_size": 8, "eval.batch_size": 8})
    config_checks.check(config, num_devices=8, process_count=2)
    with pytest.raises(ConfigError, match="3 processes"):
        config_checks.check(config, num_devices=6, process_count=3)  # 8 % 6 fails too


def test_train_refuses_before_touching_the_workdir(tmp_path):
    from hybrid_jax import train

    config = _config(**{"model.fusion.mode": "late", "data.metadata": "none"})
    with pytest.raises(ConfigError, match="data.metadata"):
        train.train_and_evaluate(config, tmp_path / "run")
    assert not (tmp_path / "run").exists()
