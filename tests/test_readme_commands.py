"""Every command the README shows runs, as a subprocess, exactly as written there.

The commands are read from README.md's ```bash blocks, so the README and the tests cannot drift
apart: a new command without a recipe here fails ``test_every_readme_command_has_a_recipe``. Each
recipe adds only tiny overrides (fewer steps, a smaller batch, fixture files where the README
names a download) and checks the files or output the README promises. The commands run in a
scratch workspace that looks like a checkout (``configs/`` and ``tools/`` linked in), so their
relative paths (``data/``, ``workdirs/``, ``pretrained/``) land there, not in the repository.
"""
from __future__ import annotations

import csv
import dataclasses
import json
import pathlib
import re
import shlex
import socket
import subprocess
import time
import urllib.parse
import urllib.request
from typing import Callable

import numpy as np
import pytest
import soundfile as sf
from commands import REPO, environment, run

README = REPO / "README.md"
FIXTURES = REPO / "tests" / "fixtures"
ABSL_INFO = re.compile(r"^I\d{4} ", re.M)  # an absl INFO record (I1202 12:00:00.0 ...)

# The demo, shrunk: 13 training clips (65 pairs: an epoch of two batches of 32), two steps.
DEMO = ["--config.train.max_steps=2", "--config.data.synthetic_clips.development=13",
        "--config.data.synthetic_clips.validation=16", "--config.data.synthetic_clips.evaluation=16"]
TINY_PLAN = ["--config.data.clip_seconds=2", "--config.model.audio.checkpoint=", "--config.model.audio.width_mult=0.1"]
# The paper configs on the prepared synthetic set (3 training clips: an epoch is one batch of 8, so
# the one step ends an epoch and a best checkpoint exists) with the fixture towers, 10 s clips.
PAPER = ["--config.train.max_steps=1", "--config.train.batch_size=8", "--config.eval.batch_size=8",
         "--config.data.clip_seconds=10"]


def readme_commands() -> list[list[str]]:
    """The commands of README.md's ```bash blocks, continuation lines joined, comments dropped."""
    commands = []
    for body in re.findall(r"```bash\n(.*?)```", README.read_text(), re.S):
        for line in re.sub(r"\\\n\s*", " ", body).splitlines():
            tokens = shlex.split(line, comments=True)
            if tokens:
                commands.append(tokens)
    return commands


@dataclasses.dataclass
class Recipe:
    """How one README command runs in a test."""

    name: str
    prefix: tuple[str, ...]  # the command's first tokens (after the interpreter)
    extra: list[str] = dataclasses.field(default_factory=list)  # appended (later flags win)
    # README token -> test token (a callable gets the workspace: files the test picks)
    replace: dict[str, str | Callable] = dataclasses.field(default_factory=dict)
    needs: tuple[str, ...] = ()  # recipes (or workspace inputs) that must run first
    check: Callable | None = None  # (workspace, completed process) -> None
    ci_only: bool = False  # run by .ci/run itself (setup, the test command)
    server: bool = False  # runs until stopped: started, queried by ``check``, terminated
    # The test module that runs it, each with its own workspace: the chains are independent, so
    # the suite's two processes run them side by side (needs stay inside a group).
    group: str = "paper"

    def matches(self, tokens: list[str]) -> bool:
        return tuple(tokens[1:1 + len(self.prefix)]) == self.prefix


def check_trained(workdir: str, split: str = "test"):
    def check(ws: pathlib.Path, result):
        results = json.loads((ws / workdir / f"results_{split}.json").read_text())
        assert 0.0 <= results["mAP@10"] <= 1.0 and results["split"] == split
        assert f"test ({results['dataset']} {split}" in result.stdout  # the final results line
        assert (ws / workdir / "checkpoints" / "latest").is_dir()
        assert list((ws / workdir / "logs").glob("train.*.log"))
        assert not ABSL_INFO.search(result.stderr), "library INFO logs leaked to the terminal"
    return check


def check_evaluated(workdir: str, missing: float):
    def check(ws: pathlib.Path, result):
        results = json.loads((ws / workdir / "results_test.json").read_text())
        assert results["missing_metadata"] == missing and results["checkpoint"] == "best"
        with open(ws / workdir / "submission_test.csv", newline="") as f:
            rows = list(csv.reader(f))
        assert rows[0] == ["caption"] + [f"file_name_{i}" for i in range(1, 11)]
        assert len(rows) - 1 == results["num_queries"]
        assert "mAP@10" in result.stdout and not ABSL_INFO.search(result.stderr)
    return check


def check_converted(directory: str, kind: str):
    def check(ws: pathlib.Path, result):
        config = json.loads((ws / directory / "config.json").read_text())
        assert (ws / directory / "variables.safetensors").is_file()
        assert ("width_mult" in config) if kind == "audio" else config["model"] == "bert"
        assert "wrote" in result.stdout
    return check


def check_prepared(data_dir: str, dataset: str):
    def check(ws: pathlib.Path, result):
        report = json.loads((ws / data_dir / dataset / "prepare_report.json").read_text())
        assert report["status"] == "prepared"
        assert (ws / data_dir / dataset / "1.0.0" / "dataset_info.json").is_file()
        assert not ABSL_INFO.search(result.stderr) and "Downloading and preparing" not in result.stdout
    return check


def check_synthetic(ws: pathlib.Path, result):
    summary = json.loads(result.stdout)
    assert summary["clips"] if "clips" in summary else summary
    assert (ws / "data" / "synthetic_clotho" / "clotho_captions_development.csv").is_file()


def check_sweep(ws: pathlib.Path, result):
    out = ws / "workdirs" / "sweep_demo"
    for name in ("scaling.csv", "scaling.md", "scaling.png"):
        assert (out / name).is_file(), name
    rows = list(csv.DictReader(open(out / "scaling.csv")))
    assert [int(r["batch_size"]) for r in rows] == [8, 16] and all(0 <= float(r["test_mAP@10"]) <= 1 for r in rows)


def check_benchmark(ws: pathlib.Path, result):
    report = json.loads(result.stdout[result.stdout.index("{"):])
    assert report["batch_size"] == 8 and report["pairs_per_s"] > 0 and report["flops_per_step"] > 0
    assert report["mfu"] is not None and report["config"] == "configs/clotho_late.py"
    # The model's own FLOPs (hybrid_jax.flops) and the MFU they give.
    assert report["analytic_flops_per_pair"] > 0 and report["model_tflops"] > 0
    assert report["mfu_analytic"] == pytest.approx(
        report["model_tflops"] / (report["peak_tflops_per_device"] * report["num_devices"]))


def check_plan(generation: str, batch: int | None, chips: int = 4, platform: str = "tpu"):
    def check(ws: pathlib.Path, result):
        report = json.JSONDecoder().raw_decode(result.stdout[result.stdout.index("{"):])[0]
        assert report["chips"] == chips and report["platform"] == platform, report
        assert generation in report["topology"], report
        assert report["fits"] and (batch is None or report["batch_size"] == batch), report
        assert report["memory_per_chip"], report
        # XLA:GPU has no cost analysis: the GPU report has no compiled FLOPs, only the model's.
        assert (report["flops_per_chip_step"] > 0) if platform == "tpu" else report["analytic_flops_per_pair"] > 0
        if batch is None:  # one compilation: the search itself is tested in test_plan_search.py
            assert [tuple(t)[:2] for t in report["max_batch_search"]["tried"]] == [(2 * chips, True)], report
            assert report["batch_size"] == 2 * chips
    return check


def check_exported(ws: pathlib.Path, result):
    for name in ("model.json", "variables.safetensors", "card.json", "README.md", "vocab.txt"):
        assert (ws / "models" / "demo" / name).is_file(), name
    assert "exported the best checkpoint" in result.stdout and not ABSL_INFO.search(result.stderr)


def check_model_evaluated(ws: pathlib.Path, result):
    exported = json.loads((ws / "models" / "demo" / "results_test.json").read_text())
    trained = json.loads((ws / "workdirs" / "demo" / "results_test.json").read_text())
    assert abs(exported["mAP@10"] - trained["mAP@10"]) < 1e-6  # the model directory is the run
    assert "(model models/demo" in result.stdout


def check_indexed(ws: pathlib.Path, result):
    clips = len(list((ws / "data" / "demo" / "synthetic_clotho" / "evaluation").glob("*.wav")))
    assert f"the index holds {clips} items" in result.stdout.strip().splitlines()[-1]
    assert (ws / "indexes" / "demo" / "last_run.json").is_file()


def check_ranked(count: int):
    def check(ws: pathlib.Path, result):
        ranks = re.findall(r"^\s+(\d+)\. [+-]\d\.\d{3}  ", result.stdout, re.M)
        assert [int(r) for r in ranks] == list(range(1, count + 1)), result.stdout
    return check


def check_served(ws: pathlib.Path, url: str):
    with urllib.request.urlopen(url + "/api/search?" + urllib.parse.urlencode({"q": "a dog barks"}),
                                timeout=120) as response:
        results = json.loads(response.read())["results"]
    assert len(results) > 0 and all("score" in r for r in results)
    with urllib.request.urlopen(url + "/", timeout=60) as response:
        assert b"<html" in response.read().lower()


def first_evaluation_clip(ws: pathlib.Path) -> str:
    return str(sorted((ws / "data" / "demo" / "synthetic_clotho" / "evaluation").glob("*.wav"))[0])


def wait_for_port(url: str, process: subprocess.Popen, deadline: float) -> None:
    host, port = urllib.parse.urlsplit(url).hostname, urllib.parse.urlsplit(url).port
    while time.monotonic() < deadline:
        try:
            with socket.create_connection((host, port), timeout=5):
                return
        except OSError:
            if process.poll() is not None:
                raise AssertionError(f"the server exited before listening on {url}")
            time.sleep(0.5)
    raise AssertionError(f"nothing listens on {url}")


def free_port() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return str(s.getsockname()[1])


def check_in_ci(ws: pathlib.Path, tokens: list[str]):
    ci = (REPO / ".ci" / "run").read_text().splitlines()
    assert shlex.join(tokens) in ci, f"{shlex.join(tokens)!r} is not a line of .ci/run"


RECIPES = [
    Recipe("setup", ("tools/setup.sh",), ci_only=True),
    Recipe("pytest", ("-m", "pytest"), ci_only=True),
    Recipe("install_tpu_compiler", ("install", "-r", "requirements-tpu.txt"), ci_only=True, group="plan"),
    Recipe("install_gpu_compiler", ("install", "-r", "requirements-gpu-plan.txt"), ci_only=True, group="plan"),
    Recipe("demo", ("-m", "hybrid_jax.train", "--config", "configs/demo.py"), DEMO,
           check=check_trained("workdirs/demo"), group="demo"),
    Recipe("demo_baseline", ("-m", "hybrid_jax.train", "--config", "configs/demo_baseline.py"), DEMO,
           check=check_trained("workdirs/demo_baseline"), group="demo"),
    Recipe("synthetic", ("tools/make_synthetic_dataset.py",),
           replace={"development=400,validation=64,evaluation=64": "development=3,validation=8,evaluation=8"},
           extra=["--min-seconds", "2", "--max-seconds", "4"], check=check_synthetic),
    Recipe("prepare_synthetic", ("-m", "hybrid_jax.prepare", "clotho", "--source", "data/synthetic_clotho"),
           needs=("synthetic",), check=check_prepared("data/synthetic_tfds", "clotho")),
    Recipe("prepare_clotho", ("-m", "hybrid_jax.prepare", "clotho", "--source", "Clotho.v2.1"),
           needs=("synthetic", "clotho_source"), check=check_prepared("data/tfds", "clotho")),
    Recipe("prepare_audiocaps", ("-m", "hybrid_jax.prepare", "audiocaps"), needs=("audiocaps_source",),
           check=check_prepared("data/tfds", "audiocaps")),
    Recipe("prepare_wavcaps", ("-m", "hybrid_jax.prepare", "wavcaps_freesound"), needs=("wavcaps_source",),
           check=check_prepared("data/tfds", "wavcaps_freesound")),
    Recipe("convert_efficientat_pt", ("tools/convert_efficientat.py", "mn40_as_ext_mAP_487.pt"),
           replace={"mn40_as_ext_mAP_487.pt": str(FIXTURES / "efficientat_mn04" / "state_dict.pt"),
                    "mn40_as_ext": "mn04_as"},  # the fixture is an mn04: its release name
           check=check_converted("pretrained/mn40_as_ext", "audio")),
    Recipe("convert_efficientat_safetensors", ("tools/convert_efficientat.py", "state_dict.safetensors"),
           replace={"state_dict.safetensors": str(FIXTURES / "efficientat_mn04" / "state_dict.safetensors")},
           check=check_converted("pretrained/mn04", "audio")),
    Recipe("convert_bert", ("tools/convert_bert.py",), needs=("bert_source",),
           check=check_converted("pretrained/bert-base-uncased", "text")),
    Recipe("clotho_late", ("-m", "hybrid_jax.train", "--config", "configs/clotho_late.py", "--workdir",
                           "workdirs/clotho_late"), PAPER,
           needs=("prepare_clotho", "convert_efficientat_pt", "convert_bert"),
           check=check_trained("workdirs/clotho_late")),
    Recipe("clotho_late_seed1", ("-m", "hybrid_jax.train", "--config", "configs/clotho_late.py", "--workdir",
                                 "workdirs/clotho_late_seed1"), PAPER,
           needs=("prepare_clotho", "convert_efficientat_pt", "convert_bert"),
           check=check_trained("workdirs/clotho_late_seed1")),
    Recipe("evaluate", ("-m", "hybrid_jax.evaluate", "--config", "configs/clotho_late.py", "--workdir",
                        "workdirs/clotho_late", "--checkpoint", "best", "--split", "test", "--missing_metadata"),
           needs=("clotho_late",), check=check_evaluated("workdirs/clotho_late", 0.3)),
    Recipe("evaluate_plain", ("-m", "hybrid_jax.evaluate", "--config", "configs/clotho_late.py", "--workdir",
                              "workdirs/clotho_late", "--checkpoint", "best", "--split", "test"),
           needs=("clotho_late", "evaluate"), check=check_evaluated("workdirs/clotho_late", 0.0)),
    Recipe("scaling_sweep", ("tools/scaling_sweep.py",),
           ["--batch-sizes", "8,16", "--microbatch-size", "8", "--max-steps", "1", "--bench-steps", "1",
            "--bench-warmup", "0"] + DEMO[1:], needs=("demo",), check=check_sweep, group="demo"),
    Recipe("benchmark", ("-m", "hybrid_jax.benchmark", "--config", "configs/clotho_late.py"),
           ["--batch-size", "8", "--steps", "1", "--warmup", "0", "--config.data.clip_seconds=10"],
           needs=("convert_efficientat_pt", "convert_bert"), check=check_benchmark),
    # Compile-only TPU plans: a smaller slice of the same generation (the compile time grows with
    # the model, not with the chips), the fixture BERT, an untrained width-0.1 CNN in place of the
    # released one (a missing tower is built from its architecture; the TPU compiler takes ~5 CPU-min
    # for the mn04 fixture, ~2.5 for this), 2 s clips, one compilation for the batch search (its
    # doubling and bisection are tested without the compiler in test_plan_search.py).
    Recipe("plan_v5p", ("-m", "hybrid_jax.benchmark", "--config", "configs/clotho_late.py", "--topology"),
           TINY_PLAN, replace={"v5p:4x4x4": "v5p:2x2x1", "4096": "16"},
           needs=("convert_bert",), check=check_plan("v5p", 16), group="plan"),
    Recipe("plan_v5e_max_batch", ("-m", "hybrid_jax.benchmark", "--config", "configs/clotho_late.py", "--topology",
                                  "v5e:4x4", "--max-batch"),
           TINY_PLAN + ["--start-per-chip", "2", "--max-compiles", "1"],
           replace={"v5e:4x4": "v5e:2x2"}, needs=("convert_bert",), check=check_plan("v5e", None), group="plan"),
    Recipe("plan_h100_max_batch", ("-m", "hybrid_jax.benchmark", "--config", "configs/clotho_late.py", "--topology",
                                   "h100:8", "--max-batch"),
           TINY_PLAN + ["--start-per-chip", "2", "--max-compiles", "1"],
           needs=("convert_bert",), check=check_plan("h100", None, chips=8, platform="gpu"), group="plan"),
]


RECIPES += [
    Recipe("export", ("-m", "hybrid_jax.export"), needs=("demo",), check=check_exported, group="demo"),
    Recipe("evaluate_model", ("-m", "hybrid_jax.evaluate", "--config", "configs/demo.py", "--model"),
           needs=("export",), check=check_model_evaluated, group="demo"),
    Recipe("search_index", ("-m", "hybrid_jax.search", "index"), needs=("export",), check=check_indexed,
           group="demo"),
    Recipe("search_query", ("-m", "hybrid_jax.search", "query", "--index", "indexes/demo",
                            "a dog barks while rain falls on a roof"), needs=("search_index",),
           check=check_ranked(5), group="demo"),
    Recipe("search_by_example", ("-m", "hybrid_jax.search", "query", "--index", "indexes/demo", "--audio"),
           replace={"my_recording.wav": first_evaluation_clip}, needs=("search_index",),
           check=check_ranked(10), group="demo"),
    Recipe("serve", ("-m", "hybrid_jax.serve"), replace={"8000": "PORT"}, needs=("search_index",),
           server=True, check=check_served, group="demo"),
]


def recipe_for(tokens: list[str]) -> Recipe:
    found = [r for r in RECIPES if r.matches(tokens)]
    # The longest prefix wins (evaluate --missing_metadata vs plain evaluate).
    found.sort(key=lambda r: -len(r.prefix))
    if not found:
        raise LookupError(f"no recipe for README command {shlex.join(tokens)!r}")
    if len(found) > 1 and len(found[0].prefix) == len(found[1].prefix):
        raise LookupError(f"two recipes match {shlex.join(tokens)!r}: {found[0].name}, {found[1].name}")
    return found[0]


def test_every_readme_command_has_a_recipe():
    commands = readme_commands()
    used = {recipe_for(tokens).name for tokens in commands}
    assert len(commands) >= 15
    assert used == {r.name for r in RECIPES}, f"recipes for no README command: {sorted({r.name for r in RECIPES} - used)}"
    for tokens in commands:
        assert tokens[0] in (".venv/bin/python", ".venv/bin/pip", "bash"), f"run it with the project's venv: {shlex.join(tokens)}"
    assert len(used) == len(commands), "two README commands share a recipe"


# ---- inputs the README assumes the user has (downloads), made here from fixtures ----

def make_clotho_source(ws: pathlib.Path) -> None:
    (ws / "Clotho.v2.1").symlink_to(ws / "data" / "synthetic_clotho", target_is_directory=True)


def make_bert_source(ws: pathlib.Path) -> None:
    """The bert_tiny fixture as a HF folder, with the first 2000 entries of MiniLM's (= bert-base's)
    vocabulary (its vocab size)."""
    from hybrid_jax.models import text

    folder = ws / "path" / "to" / "bert-base-uncased"
    folder.mkdir(parents=True)
    for name in ("config.json", "model.safetensors"):
        (folder / name).write_bytes((FIXTURES / "bert_tiny" / name).read_bytes())
    vocab = (text.minilm_package_dir() / "vocab.txt").read_text().splitlines()[:2000]
    (folder / "vocab.txt").write_text("\n".join(vocab) + "\n")


def _tone(path: pathlib.Path, seconds: float, rate: int, freq: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    t = np.arange(int(seconds * rate)) / rate
    sf.write(path, (0.3 * np.sin(2 * np.pi * freq * t)).astype(np.float32), rate)


def make_audiocaps_source(ws: pathlib.Path) -> None:
    """AudioCaps v1 CSVs, aac-datasets-style audio and the AudioSet label files, two clips a split."""
    root = ws / "audiocaps_root"
    header = "audiocap_id,youtube_id,start_time,caption\n"
    labels = ["index,mid,display_name", '0,/m/09x0r,"Speech"', '1,/m/0bt9lr,"Dog"']
    segments = ["# header", "# YTID, start_seconds, end_seconds, positive_labels"]
    for s, split in enumerate(("train", "val", "test")):
        rows = []
        for c in range(2):
            ytid = f"{split}clip{c}".ljust(11, "_")[:11]
            _tone(root / "audio" / split / f"{ytid}_{10 * c}.wav", 2.0, 32000, 300 + 100 * c + 50 * s)
            rows.append(f'{100 * s + c},{ytid},{10 * c},"A dog barks, take {c}"')
            segments.append(f'{ytid}, {10 * c}.000, {10 * c + 10}.000, "/m/0bt9lr,/m/09x0r"')
        (root / f"{split}.csv").write_text(header + "\n".join(rows) + "\n")
    (root / "class_labels_indices.csv").write_text("\n".join(labels) + "\n")
    (root / "balanced_train_segments.csv").write_text("\n".join(segments) + "\n")


def make_wavcaps_source(ws: pathlib.Path) -> None:
    root = ws / "WavCaps"
    entries = []
    for sid in range(1000, 1004):
        _tone(root / "Audio" / "FreeSound" / f"{sid}.flac", 1.5, 44100, 200 + sid % 7 * 60)
        entries.append({"id": str(sid), "caption": f"Rain falls, sound {sid}.", "tags": ["rain", "roof"],
                        "file_name": f"{sid}.wav", "duration": 1.5})
    (root / "json_files" / "FreeSound").mkdir(parents=True)
    (root / "json_files" / "FreeSound" / "fsd_final.json").write_text(
        json.dumps({"num_captions_per_audio": 1, "data": entries}))
    (root / "json_files" / "blacklist").mkdir(parents=True)
    (root / "json_files" / "blacklist" / "blacklist_exclude_all_ac.json").write_text(
        json.dumps({"AudioSet": [], "FreeSound": ["1003"]}))


SALSA = FIXTURES / "salsa_hybrid"  # the authors' model (tiny random BERT, 52-word vocab), see its README


def make_salsa_sources(ws: pathlib.Path) -> None:
    """The authors' checkpoints the README converts, made from the salsa_hybrid fixture:
    ``last.ckpt`` (the fixture), with ``vocab.txt`` and the tiny BERT's Hugging Face ``config.json``;
    ``epoch_22.ckpt``, the same model said to be bert-base-uncased (a 30522-word embedding, so the
    packaged bert-base vocab is the one the converter takes); and that model as a bare
    ``state_dict.safetensors`` with Lightning's ``hparams.yaml``."""
    import pt_writer
    import yaml
    from safetensors.numpy import save_file

    from hybrid_jax.convert.state_dict import read_checkpoint

    (ws / "last.ckpt").write_bytes((SALSA / "model.ckpt").read_bytes())
    (ws / "vocab.txt").write_bytes((SALSA / "vocab.txt").read_bytes())
    state_dict, extras = read_checkpoint(SALSA / "model.ckpt")
    prefix = "sentence_embedding_model."
    hidden = state_dict[prefix + "embeddings.word_embeddings.weight"].shape[1]
    layers = len({k.split(".")[3] for k in state_dict if k.startswith(prefix + "encoder.layer.")})
    (ws / "config.json").write_text(json.dumps({
        "model_type": "bert", "vocab_size": 52, "hidden_size": hidden, "num_hidden_layers": layers,
        "num_attention_heads": hidden // 64,
        "intermediate_size": state_dict[prefix + "encoder.layer.0.intermediate.dense.weight"].shape[0],
        "max_position_embeddings": state_dict[prefix + "embeddings.position_embeddings.weight"].shape[0],
        "type_vocab_size": 2, "hidden_act": "gelu", "layer_norm_eps": 1e-12}))
    words = np.random.default_rng(0).normal(0, 0.02, (30522, hidden)).astype(np.float32)
    state_dict[prefix + "embeddings.word_embeddings.weight"] = words
    hparams = json.loads(json.dumps(extras["hyper_parameters"]))
    hparams["sentence_features"]["model"] = "bert-base-uncased"
    pt_writer.save_zip({"state_dict": state_dict, "hyper_parameters": hparams, "epoch": 22}, ws / "epoch_22.ckpt")
    save_file(state_dict, str(ws / "state_dict.safetensors"))
    (ws / "hparams.yaml").write_text(yaml.safe_dump(hparams))


def check_salsa(directory: str, vocab_size: int):
    def check(ws: pathlib.Path, result):
        from hybrid_jax import model_dir

        loaded = model_dir.load(ws / directory)
        assert loaded.model.text.vocab_size == vocab_size and loaded.model.fusion == "late"
        assert loaded.segment_seconds == 30.0 and loaded.model.pooling.num_layers == 2 and loaded.tokenizer(["a dog barks"])["input_ids"].shape[0] == 1
        assert "wrote" in result.stdout or str(directory) in result.stdout, result.stdout
    return check


RECIPES += [
    Recipe("convert_salsa_bert_base", ("tools/convert_salsa.py", "epoch_22.ckpt"), needs=("salsa_sources",),
           check=check_salsa("models/salsa_late", 30522)),
    Recipe("convert_salsa_other_bert", ("tools/convert_salsa.py", "last.ckpt"), needs=("salsa_sources",),
           check=check_salsa("models/salsa_tiny", 52)),
    Recipe("convert_salsa_safetensors", ("tools/convert_salsa.py", "state_dict.safetensors"),
           needs=("salsa_sources",), check=check_salsa("models/salsa", 30522)),
]

INPUTS = {"clotho_source": make_clotho_source, "bert_source": make_bert_source,
          "audiocaps_source": make_audiocaps_source, "wavcaps_source": make_wavcaps_source,
          "salsa_sources": make_salsa_sources}


class Workspace:
    """A scratch checkout-like folder; runs recipes once each, prerequisites first."""

    def __init__(self, root: pathlib.Path):
        self.root = root
        for name in ("configs", "tools"):
            (root / name).symlink_to(REPO / name, target_is_directory=True)
        self.commands = {}
        for tokens in readme_commands():
            name = recipe_for(tokens).name
            if name in self.commands:  # a second command would silently replace the first
                raise LookupError(f"two README commands share the recipe {name!r}: give each its own")
            self.commands[name] = tokens
        self.done: dict[str, object] = {}

    def ensure(self, name: str):
        if name in self.done:
            return self.done[name]
        if name in INPUTS:
            INPUTS[name](self.root)
            self.done[name] = None
            return None
        recipe = next(r for r in RECIPES if r.name == name)
        for need in recipe.needs:
            self.ensure(need)
        tokens = [recipe.replace.get(t, t) for t in self.commands[name]] + recipe.extra
        tokens = [t(self.root) if callable(t) else t for t in tokens]
        if recipe.server:
            return self.serve(tokens, recipe)
        result = run(tokens, cwd=self.root, timeout=1200)
        self.done[name] = result
        return result

    def serve(self, tokens: list[str], recipe: Recipe):
        """Starts the server, waits for its "serving ... at URL" line, checks it, stops it."""
        port = free_port()
        tokens = [port if t == "PORT" else t for t in tokens]
        tokens[0] = __import__("sys").executable
        process = subprocess.Popen(tokens, cwd=self.root, env=environment(), stdout=subprocess.PIPE,
                                   stderr=subprocess.STDOUT, text=True)
        try:
            deadline, lines = time.monotonic() + 900, []
            while time.monotonic() < deadline:
                line = process.stdout.readline()
                if not line and process.poll() is not None:
                    raise AssertionError("the server exited:\n" + "".join(lines[-50:]))
                lines.append(line)
                found = re.search(r"at (http://127\.0\.0\.1:\d+)", line)
                if found:
                    # The line can come before uvicorn listens: wait for the port, then check.
                    wait_for_port(found.group(1), process, time.monotonic() + 120)
                    recipe.check(self.root, found.group(1))
                    self.done[recipe.name] = "".join(lines)
                    return self.done[recipe.name]
            raise AssertionError("the server did not start in time:\n" + "".join(lines[-50:]))
        finally:
            process.terminate()
            process.wait(timeout=60)


def group(name: str) -> list[str]:
    return [r.name for r in RECIPES if r.group == name]


CHEAP = {"convert_bert"}  # seconds: run again in each group's workspace that needs it


def test_needs_stay_inside_a_group():
    """A need from another group would run again in this group's workspace: only cheap ones may."""
    by_name = {r.name: r for r in RECIPES}
    for recipe in RECIPES:
        for need in recipe.needs:
            assert need in INPUTS or need in CHEAP or by_name[need].group == recipe.group, (recipe.name, need)


def run_recipe(workspace: Workspace, name: str) -> None:
    recipe = next(r for r in RECIPES if r.name == name)
    if recipe.ci_only:
        check_in_ci(workspace.root, workspace.commands[name])
        return
    result = workspace.ensure(name)
    if not recipe.server:  # a server was checked while it ran
        recipe.check(workspace.root, result)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory):
    return Workspace(tmp_path_factory.mktemp("readme_workspace"))


@pytest.mark.slow
@pytest.mark.parametrize("name", group("paper"))
def test_readme_command(workspace, name):
    run_recipe(workspace, name)
