"""End-to-end training on a tiny config over 8 emulated devices: two steps, exact resume, a NaN
stops cleanly, the evaluation CLI path writes its results and the DCASE CSV, and an exported model
evaluates like its checkpoint."""
import csv
import json
import math
import shutil

import numpy as np
import pytest

from configs import demo
from hybrid_jax import evaluate, train
from hybrid_jax.checkpointing import Checkpoints


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    return tmp_path_factory.mktemp("tiny_data")


def tiny_config(data_root, **overrides):
    c = demo.get_config()
    c.model.audio.width_mult = 0.1
    c.model.audio.window_seconds = 1.0
    c.model.audio.freq_mask_bins, c.model.audio.time_mask_frames = 8, 20
    c.model.pooling.dim, c.model.pooling.num_heads, c.model.pooling.mlp_dim = 32, 2, 64
    c.model.pooling.max_len = 16
    c.model.fusion.embed_dim = 32
    c.data.synthetic_dir = str(data_root / "raw")
    c.data.data_dir = str(data_root / "tfds")
    c.data.synthetic_clips = {"development": 8, "validation": 4, "evaluation": 4}
    c.data.synthetic_seconds = (1.0, 3.0)
    c.data.clip_seconds = 2.0
    c.train.batch_size = 8  # 40 pairs -> 5 steps per epoch
    c.train.num_epochs = 2
    c.train.log_every_steps = 1
    c.eval.batch_size = 8
    for key, value in overrides.items():
        section, name = key.split(".")
        c[section][name] = value
    return c


def losses(workdir):
    rows = [json.loads(line) for line in (workdir / "metrics.jsonl").read_text().splitlines()]
    return {r["step"]: r["train/loss"] for r in rows if "train/loss" in r}


@pytest.fixture(scope="module")
def trained(data_root, tmp_path_factory):
    """One two-step run on 8 devices, shared by the tests that only read its workdir."""
    workdir = tmp_path_factory.mktemp("trained")
    config = tiny_config(data_root, **{"train.max_steps": 2})
    result = train.train_and_evaluate(config, workdir)
    # Read now: the evaluation test below writes into the same workdir.
    result["written"] = json.loads((workdir / "results_test.json").read_text())
    return config, workdir, result


def test_two_steps_on_eight_devices(trained):
    _, tmp_path, result = trained
    curve = losses(tmp_path)
    assert sorted(curve) == [1, 2] and all(math.isfinite(v) for v in curve.values())
    assert 0.0 <= result["mAP@10"] <= 1.0 and set(result) >= {"mAP@10", "R@1", "R@5", "R@10"}
    assert result["written"]["mAP@10"] == result["mAP@10"]
    assert list((tmp_path / "tensorboard").iterdir())
    row = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[0])
    assert {"step", "train/loss", "lr", "examples_per_s"} <= set(row)


def test_resume_gives_the_uninterrupted_loss_curve(data_root, tmp_path):
    straight, interrupted = tmp_path / "straight", tmp_path / "interrupted"
    train.train_and_evaluate(tiny_config(data_root, **{"train.max_steps": 7}), straight)
    train.train_and_evaluate(tiny_config(data_root, **{"train.max_steps": 3}), interrupted)
    train.train_and_evaluate(tiny_config(data_root, **{"train.max_steps": 7}), interrupted)
    a, b = losses(straight), losses(interrupted)
    assert sorted(a) == sorted(b) == list(range(1, 8))  # crosses the epoch boundary at step 5
    np.testing.assert_allclose([b[s] for s in range(1, 8)], [a[s] for s in range(1, 8)], rtol=1e-6)


def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(data_root, trained, tmp_path):
    tmp_path = tmp_path / "workdir"
    shutil.copytree(trained[1], tmp_path)  # a copy of the two-step run, resumed with lr = inf
    bad = tiny_config(data_root, **{"train.max_steps": 4, "optim.peak_lr": float("inf")})
    with pytest.raises(train.NonFiniteLossError, match=r"at step 4"):
        train.train_and_evaluate(bad, tmp_path)
    checkpoints = Checkpoints(tmp_path)
    assert checkpoints.latest_step() == 2
    checkpoints.close()


def test_evaluate_writes_results_and_dcase_submission(trained):
    config, tmp_path, _ = trained
    result = evaluate.run(config, tmp_path, checkpoint="latest", missing_metadata=0.5)
    assert result["num_items"] == 4 and result["num_queries"] == 20 and result["missing_metadata"] == 0.5
    with open(tmp_path / "submission_test.csv", newline="", encoding="utf-8") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["caption"] + [f"file_name_{i}" for i in range(1, 11)]
    assert len(rows) == 21
    assert all(len(r) == 1 + 4 for r in rows[1:])  # only 4 items exist: the top-4 are listed


def test_export_writes_a_model_that_evaluates_like_its_checkpoint(trained, tmp_path):
    from hybrid_jax import export, model_dir

    config, workdir, result = trained
    out = export.export(config, workdir, tmp_path / "model", "best", "tiny_config")  # no best yet: latest
    card = json.loads((out / "card.json").read_text())
    assert card["checkpoint"]["which"] == "latest" and card["checkpoint"]["step"] == 2
    assert card["metrics"]["test"] == json.loads((workdir / "results_test.json").read_text())
    assert card["training_data"]["dataset"] == "clotho" and card["config_file"] == "tiny_config"
    assert card["config"]["model"]["fusion"]["mode"] == "late" and card["hybrid_jax_version"] and card["created"]
    loaded = model_dir.load(out)
    assert sorted(loaded.variables) == ["batch_stats", "params"]  # no optimizer state, no step
    import orbax.checkpoint as ocp

    from hybrid_jax.convert import weights

    saved = ocp.PyTreeCheckpointer().restore((workdir / "checkpoints" / "latest" / "2" / "state").absolute())
    for part in ("params", "batch_stats"):  # the checkpoint's arrays, bit for bit
        want, got = weights.flatten(saved[part]), weights.flatten(loaded.variables[part])
        assert sorted(want) == sorted(got)
        for key in want:
            np.testing.assert_array_equal(got[key], want[key], err_msg=key)
    assert loaded.segment_seconds == config.data.clip_seconds and loaded.model.dtype == np.float32
    # The exported weights are the checkpoint's: evaluating the model directory (evaluate --model)
    # reproduces the test metrics training computed from that checkpoint.
    again = evaluate.run(config, tmp_path / "eval", model=out)
    for key in ("mAP@10", "R@1", "R@5", "R@10"):
        assert again[key] == pytest.approx(result[key], abs=1e-6), key
    assert (tmp_path / "eval" / "results_test.json").is_file() and again["checkpoint"] == str(out)
