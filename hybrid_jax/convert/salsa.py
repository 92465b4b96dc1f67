"""Checkpoints of the authors' code (OptimusPrimus/salsa ``AudioRetrievalModel``) -> a model directory.

The architecture comes from the hyper-parameters (a Lightning checkpoint carries them; for a bare
state dict or ``.safetensors`` pass the run's config) and the tensor shapes: MobileNet width, pooling
width / layers / feed-forward size / position table length, projection size, tau, window or frame
tokens, late fusion or not, a separate metadata encoder. Every PyTorch key is then mapped by a key
map to Flax variable paths with a named tensor rule (``rules``), reusing the EfficientAT and BERT key
maps; the keys the retrieval model does not use (the CNN's AudioSet classifier, ``timing_tau``, BN
step counters, the fixed position table, which is checked against ours) are named as dropped. A
checkpoint that does not fit fails with every unmapped, missing or mis-shaped key in one error.
Settings of the authors' code that change the eval forward pass and that the Flax model does not
implement are refused by name. The result is written with ``model_dir.save``.
"""
from __future__ import annotations

import dataclasses
import json
import pathlib
import re
import shutil
import tempfile
from typing import Any, Mapping, NamedTuple, Optional

import jax
import numpy as np
from flax import traverse_util

from hybrid_jax import model_dir, schema
from hybrid_jax.convert import bert as convert_bert
from hybrid_jax.convert import efficientat, weights
from hybrid_jax.convert.rules import (
    COPY,
    LINEAR_TO_DENSE,
    TAU_TO_LOG,
    TO_SCALAR,
    TO_VECTOR,
    ConversionError,
    TensorRule,
    attention_out,
    packed_attention_in,
)
from hybrid_jax.convert.state_dict import read_checkpoint
from hybrid_jax.models import frontend, text
from hybrid_jax.models.bert import BertConfig
from hybrid_jax.models.pooling import sinusoidal_positions
from hybrid_jax.models.retrieval import AudioSettings, PoolingSettings, RetrievalModel

ORIGIN = "OptimusPrimus/salsa dcase2024/train.py AudioRetrievalModel (commit 8d97913)"
AUDIO_PREFIX = "audio_embedding_model.model.model."  # WindowedPrediction -> Wrapper -> MobileNetV3
TEXT_PREFIX = "sentence_embedding_model."
META_PREFIX = "metadata_embedding_model."
SEQUENCE = re.compile(r"^audio_sequence\.(\d+)\.(.+)$")
BERT_DROPOUT = 0.2  # their get_sentence_embedding_model passes hidden/attention dropout 0.2
BERT_VOCAB_SIZE = 30522  # bert-base/large-uncased (and MiniLM, whose vocab.txt is the same list)
UNCASED_BERTS = ("bert-base-uncased", "bert-large-uncased")
# torch and numpy float32 exp/sin differ by an ulp or two; at positions up to ~200 rad that is
# ~2e-5 (measured 1.5e-5 on a 192 x 128 table). A learned or random table differs by ~0.1 or more.
POSITION_TOLERANCE = 1e-4

# The authors' default_config() at 8d97913, for the keys read here that a config may lack.
DEFAULTS = {
    "audio_features.model": "passt",
    "audio_features.model_config.return_sequence": False,
    "audio_features.model_config.freqm": 0,
    "audio_features.model_config.timem": 0,
    "audio_features.use_local_model": False,
    "audio_features.adopt_n_layers": 0,
    "audio_features.segment_length": 10,
    "audio_features.hop_length": 10,
    "audio_features.aggregate": "mean",
    "audio_features.sequence_model.num_layers": 0,
    "audio_features.sequence_model.nhead": 12,
    "audio_features.sequence_model.dim_feedforward": 2048,
    "audio_features.sequence_model.use_first_token": True,
    "audio_features.sequence_model.norm_first": True,
    "audio_features.sequence_model.dropout": 0.1,
    "audio_features.sequence_model.posencode_init": "sinosoidal_fixed",
    "audio_features.sequence_model.posencode_project": False,
    "audio_features.sequence_model.ablate_posencode": False,
    "audio_features.sequence_model.normalize_input": False,
    "audio_features.sequence_model.audio_token_dropout": 0.0,
    "audio_features.sequence_model.reduce_sequence": False,
    "train_on": "clothov2",
    "sentence_features.model": "bert-base-uncased",
    "sentence_features.frozen": False,
    "sentence_features.adopt_n_layers": 0,
    "sentence_features.use_first_token": True,
    "sentence_features.max_sentence_tokens": 32,
    "sentence_features.remove_punctuation": True,
    "freeze_tau": True,
    "normalize": True,
    "use_keywords": False,
    "use_captions": False,
    "ablate_audio_embedding": False,
    "init_audio_token_with_mean": True,
    "use_separate_metadata_embedding_model": False,
    "projection_dropout": 0.0,
}
# Settings that change the eval forward pass, with the value the Flax model implements.
REQUIRED = {
    "audio_features.use_local_model": False,
    "audio_features.adopt_n_layers": 0,
    "audio_features.sequence_model.norm_first": True,
    "audio_features.sequence_model.use_first_token": True,
    "audio_features.sequence_model.posencode_init": "sinosoidal_fixed",
    "audio_features.sequence_model.posencode_project": False,
    "audio_features.sequence_model.ablate_posencode": False,
    "audio_features.sequence_model.normalize_input": False,
    "sentence_features.adopt_n_layers": 0,
    "sentence_features.use_first_token": True,
    "sentence_features.remove_punctuation": True,
    "init_audio_token_with_mean": True,
    "normalize": True,
}


class Target(NamedTuple):
    """Where one PyTorch tensor goes: a Flax variable path and its rule; ``path`` None = dropped
    on purpose (``note`` says why)."""

    path: Optional[str]
    rule: TensorRule = COPY
    note: str = ""


@dataclasses.dataclass
class Conversion:
    """A converted checkpoint: the Flax model, its variables, and what the conversion noted."""

    model: RetrievalModel
    variables: dict[str, Any]
    hyper_parameters: dict[str, Any]
    dropped: dict[str, str]  # PyTorch key -> why it is not in the model
    notes: list[str]
    max_length: int


def setting(hparams: Mapping[str, Any], key: str) -> Any:
    """A dotted hyper-parameter (``audio_features.sequence_model.nhead``), else the authors' default."""
    node: Any = hparams
    for part in key.split("."):
        if not isinstance(node, Mapping) or part not in node:
            return DEFAULTS[key]
        node = node[part]
    return node


def read(src: str | pathlib.Path, hparams_file: str | pathlib.Path | None = None):
    """-> (state dict, hyper-parameters, other checkpoint entries); torch-free, no pickled code runs.

    A Lightning checkpoint brings ``hyper_parameters``; ``hparams_file`` (JSON, or Lightning's
    ``hparams.yaml``) gives or replaces them; a bare state dict without one is refused, because the
    tensors cannot tell the attention heads, the token mode or whether metadata was fused."""
    state_dict, extras = read_checkpoint(src)
    hparams = extras.pop("hyper_parameters", None)
    if hparams_file is not None:
        path = pathlib.Path(hparams_file)
        raw = path.read_text()
        if path.suffix in (".yaml", ".yml"):
            import yaml

            hparams = yaml.safe_load(raw)
        else:
            hparams = json.loads(raw)
        if not isinstance(hparams, dict):
            raise ConversionError(f"{path}: not a mapping of hyper-parameters")
    if hparams is None:
        raise ConversionError(
            f"{src}: a bare state dict has no hyper-parameters, and its tensors do not tell the "
            "pooling heads (sequence_model.nhead), the token mode (model_config.return_sequence) or "
            "the fusion (use_keywords); pass the run's config with --hparams (JSON, or hparams.yaml)")
    return state_dict, hparams, extras


def _refusals(hparams: Mapping[str, Any], num_layers: int) -> list[str]:
    problems = [f"{key} = {setting(hparams, key)!r} (only {value!r} is implemented)"
                for key, value in REQUIRED.items() if setting(hparams, key) != value]
    if setting(hparams, "audio_features.sequence_model.reduce_sequence"):
        problems.append("audio_features.sequence_model.reduce_sequence > 0 is not implemented")
    if num_layers == 0 and setting(hparams, "audio_features.aggregate") != "mean":
        problems.append("audio_features.aggregate must be 'mean' without pooling layers")
    segment, hop = (setting(hparams, f"audio_features.{k}") for k in ("segment_length", "hop_length"))
    if segment != hop:
        problems.append(f"audio_features.hop_length = {hop} differs from segment_length = {segment} "
                        "(only non-overlapping windows are implemented)")
    audio_model = str(setting(hparams, "audio_features.model"))
    if not audio_model.startswith("mn"):
        problems.append(f"audio_features.model = {audio_model!r}: only EfficientAT MobileNets (mn*) are "
                        "implemented (PaSST and ATST are not)")
    text_model = str(setting(hparams, "sentence_features.model"))
    if any(name in text_model for name in ("roberta", "gpt2", "distil", "clip")):
        problems.append(f"sentence_features.model = {text_model!r}: only BERT text encoders are implemented")
    if setting(hparams, "use_keywords") and setting(hparams, "use_captions"):
        problems.append("use_keywords and use_captions are both set (the authors' code asserts one)")
    return problems


def bert_config_from_shapes(state_dict: Mapping[str, np.ndarray], prefix: str, source) -> BertConfig:
    """BertConfig from the tensor shapes; heads = hidden / 64, the rule of every Google BERT release
    (tiny 2, mini 4, small/medium 8, base 12, large 16). Pass --text-config for anything else."""
    def shape(name):
        key = prefix + name
        if key not in state_dict:
            raise ConversionError(f"{source}: no {key}; cannot derive the text encoder (pass --text-config)")
        return state_dict[key].shape

    vocab, hidden = shape("embeddings.word_embeddings.weight")
    layers = {int(m.group(1)) for k in state_dict if (m := re.match(re.escape(prefix) + r"encoder\.layer\.(\d+)\.", k))}
    if hidden % 64:
        raise ConversionError(f"{source}: text hidden size {hidden} is not a multiple of 64, so the number of "
                              "attention heads cannot be derived; pass --text-config")
    return BertConfig(
        vocab_size=vocab, hidden_size=hidden, num_hidden_layers=len(layers), num_attention_heads=hidden // 64,
        intermediate_size=shape("encoder.layer.0.intermediate.dense.weight")[0],
        max_position_embeddings=shape("embeddings.position_embeddings.weight")[0],
        type_vocab_size=shape("embeddings.token_type_embeddings.weight")[0],
        hidden_dropout_prob=BERT_DROPOUT, attention_probs_dropout_prob=BERT_DROPOUT)


def audio_width(state_dict: Mapping[str, np.ndarray], source: Any = "checkpoint") -> float:
    """The MobileNet width whose channel plan fits the ``audio_embedding_model`` tensors.

    Tolerant of a missing or extra key (those are reported later, all together): the width whose
    key map has no mis-shaped tensor and the most present keys wins."""
    audio = {k[len(AUDIO_PREFIX):]: v for k, v in state_dict.items() if k.startswith(AUDIO_PREFIX)}
    num_classes = efficientat.num_classes_of(audio)
    scores = {}
    for width in efficientat.WIDTHS.values():
        entries = efficientat.key_map(width, num_classes)
        present = [k for k in entries if k in audio]
        if all(tuple(audio[k].shape) == entries[k].shape for k in present):
            scores[width] = len(present) / len(entries)
    best = max(scores.values(), default=0.0)
    winners = [w for w, score in scores.items() if score == best]
    if best < 0.5 or len(winners) != 1:
        raise ConversionError(f"{source}: the {AUDIO_PREFIX}* tensors fit no single EfficientAT mn* width "
                              f"(candidates {winners or 'none'}); only the plain mn* MobileNets are supported")
    return winners[0]


def build_model(state_dict: Mapping[str, np.ndarray], hparams: Mapping[str, Any],
                text_config: BertConfig | None = None, source: Any = "checkpoint") -> RetrievalModel:
    """The RetrievalModel of a checkpoint (architecture from hyper-parameters and shapes)."""
    layer_ids = {int(m.group(1)) for k in state_dict if (m := SEQUENCE.match(k))}
    num_layers = len(layer_ids)
    problems = _refusals(hparams, num_layers)
    if layer_ids != set(range(num_layers)):
        problems.append(f"audio_sequence layers {sorted(layer_ids)} are not numbered 0..{num_layers - 1}")
    declared = setting(hparams, "audio_features.sequence_model.num_layers")
    if declared != num_layers:
        problems.append(f"hyper-parameters say {declared} pooling layers, the state dict holds {num_layers}")
    for key in ("audio_token", "posencode.pe", "project_audio.0.weight", "project_sentence.0.weight", "tau"):
        if key not in state_dict:
            problems.append(f"missing: {key} (needed to read the architecture)")
    if problems:
        raise ConversionError(f"{source} cannot be converted ({len(problems)} problems):\n  " + "\n  ".join(problems))

    width = audio_width(state_dict, source)
    dim = int(state_dict["audio_token"].shape[-1])
    max_len = int(state_dict["posencode.pe"].shape[1])
    first_mlp = state_dict.get("audio_sequence.0.linear1.weight")  # absent: reported with the other keys
    mlp_dim = int(first_mlp.shape[0]) if first_mlp is not None else int(
        setting(hparams, "audio_features.sequence_model.dim_feedforward"))
    heads = int(setting(hparams, "audio_features.sequence_model.nhead"))
    if num_layers and dim % heads:
        raise ConversionError(f"{source}: pooling width {dim} is not divisible by nhead = {heads}")
    fuses = bool(setting(hparams, "use_keywords") or setting(hparams, "use_captions"))
    fusion = ("metadata_only" if setting(hparams, "ablate_audio_embedding") else "late") if fuses else "none"
    separate = bool(setting(hparams, "use_separate_metadata_embedding_model"))
    mel = frontend.MelConfig(freq_mask_bins=int(setting(hparams, "audio_features.model_config.freqm")),
                             time_mask_frames=int(setting(hparams, "audio_features.model_config.timem")))
    tau = float(np.abs(np.asarray(state_dict["tau"], np.float64)).reshape(-1)[0])
    return RetrievalModel(
        audio=AudioSettings(
            width_mult=width, window_seconds=float(setting(hparams, "audio_features.segment_length")), mel=mel,
            bn_momentum=0.99,  # EfficientAT's BN momentum 0.01 in PyTorch terms (training only)
            tokens="frame" if setting(hparams, "audio_features.model_config.return_sequence") else "window"),
        text=text_config or bert_config_from_shapes(state_dict, TEXT_PREFIX, source),
        pooling=PoolingSettings(
            dim=dim, num_layers=num_layers, num_heads=heads, mlp_dim=mlp_dim,
            dropout=float(setting(hparams, "audio_features.sequence_model.dropout")), max_len=max_len),
        fusion=fusion,
        embed_dim=int(state_dict["project_audio.0.weight"].shape[0]),
        separate_metadata_encoder=separate,
        text_trainable=not setting(hparams, "sentence_features.frozen"),
        learn_temperature=not setting(hparams, "freeze_tau"),
        initial_temperature=tau,
    )


def _linear(prefix: str, path: str) -> dict[str, tuple[Target, ...]]:
    return {f"{prefix}.weight": (Target(f"{path}/kernel", LINEAR_TO_DENSE),),
            f"{prefix}.bias": (Target(f"{path}/bias", COPY),)}


def _layer_norm(prefix: str, path: str) -> dict[str, tuple[Target, ...]]:
    return {f"{prefix}.weight": (Target(f"{path}/scale", COPY),), f"{prefix}.bias": (Target(f"{path}/bias", COPY),)}


def _bert_targets(state_dict, prefix: str, scope: str) -> dict[str, tuple[Target, ...]]:
    out = {}
    for key in state_dict:
        if not key.startswith(prefix):
            continue
        name = key[len(prefix):]
        if name in convert_bert.SKIPPED:
            out[key] = (Target(None, note="registered buffer (arange), not a weight"),)
            continue
        if name.startswith("pooler."):
            out[key] = (Target(None, note="BERT pooler (the model uses the [CLS] hidden state)"),)
            continue
        try:
            path, rule = convert_bert.map_key(name)
        except KeyError:
            continue  # left unmapped: reported
        out[key] = (Target(f"params/{scope}/{path[len('params/'):]}", rule),)
    return out


def key_map(state_dict: Mapping[str, np.ndarray], model: RetrievalModel) -> dict[str, tuple[Target, ...]]:
    """Every PyTorch key this architecture knows -> its targets (several for the packed q/k/v)."""
    p = model.pooling
    uses_audio = model.fusion != "metadata_only"
    uses_metadata = model.fusion != "none"
    targets: dict[str, tuple[Target, ...]] = {}
    num_classes = efficientat.num_classes_of(
        {k[len(AUDIO_PREFIX):]: v for k, v in state_dict.items() if k.startswith(AUDIO_PREFIX)})
    for key, entry in efficientat.key_map(model.audio.width_mult, num_classes).items():
        collection, *rest = entry.path
        if not uses_audio:
            target = Target(None, note="audio tower unused (ablate_audio_embedding)")
        elif key.startswith("classifier."):
            target = Target(None, note="the CNN's AudioSet classifier (computed, unused by the retrieval model)")
        else:
            target = Target("/".join([collection, "audio_tower", "mobilenet", *rest]), entry.rule)
        targets[AUDIO_PREFIX + key] = (target,)
    for key in state_dict:
        if key.startswith(AUDIO_PREFIX) and key.endswith(efficientat.IGNORED_SUFFIX):
            targets[key] = (Target(None, note="BatchNorm step counter"),)
    pool_used = uses_audio and p.num_layers > 0
    why = "unused without pooling layers (the authors' num_layers=0 path)" if uses_audio else "audio unused"

    def pool(mapping):
        return mapping if pool_used else {k: tuple(Target(None, note=why) for _ in v) for k, v in mapping.items()}

    if "audio_output_projection.weight" in state_dict:
        targets |= pool(_linear("audio_output_projection", "params/pool/in_proj"))
    targets |= pool({"posencode.w": (Target("params/pool/position_scale", TO_SCALAR),),
                     "audio_token": (Target("params/pool/global_token", TO_VECTOR),)})
    targets["posencode.pe"] = (Target(None, note="the fixed sinusoid table (checked equal to ours)"),)
    for i in range(p.num_layers):
        src, dst = f"audio_sequence.{i}", f"params/pool/layer_{i}"
        packed = [packed_attention_in(part, p.dim, p.num_heads) for part in range(3)]
        targets[f"{src}.self_attn.in_proj_weight"] = tuple(
            Target(f"{dst}/attn/{name}/kernel", packed[j][0]) for j, name in enumerate(("query", "key", "value")))
        targets[f"{src}.self_attn.in_proj_bias"] = tuple(
            Target(f"{dst}/attn/{name}/bias", packed[j][1]) for j, name in enumerate(("query", "key", "value")))
        targets[f"{src}.self_attn.out_proj.weight"] = (Target(f"{dst}/attn/out/kernel", attention_out(p.dim, p.num_heads)),)
        targets[f"{src}.self_attn.out_proj.bias"] = (Target(f"{dst}/attn/out/bias", COPY),)
        targets |= _linear(f"{src}.linear1", f"{dst}/mlp_in") | _linear(f"{src}.linear2", f"{dst}/mlp_out")
        targets |= _layer_norm(f"{src}.norm1", f"{dst}/norm1") | _layer_norm(f"{src}.norm2", f"{dst}/norm2")
    if uses_audio:
        targets |= _linear("project_audio.0", "params/audio_proj")
    else:
        targets |= {k: (Target(None, note="audio unused"),) for k in ("project_audio.0.weight", "project_audio.0.bias")}
    targets |= _linear("project_sentence.0", "params/text_proj")
    targets |= _bert_targets(state_dict, TEXT_PREFIX, "bert")
    if model.separate_metadata_encoder:
        meta = _bert_targets(state_dict, META_PREFIX, "meta_bert") | _linear("project_metadata.0", "params/meta_proj")
        if not uses_metadata:
            meta = {k: (Target(None, note="metadata encoder unused (no use_keywords/use_captions)"),) for k in meta}
        targets |= meta
    targets["tau"] = (Target("params/log_temperature", TAU_TO_LOG),)
    targets["timing_tau"] = (Target(None, note="the timing loss's temperature (unused at inference)"),)
    return targets


def expected_shapes(model: RetrievalModel, max_length: int) -> dict[str, tuple[int, ...]]:
    """Flat ``collection/...`` path -> shape of the model's variables (nothing computed)."""
    window = schema.num_samples(model.audio.window_seconds)
    batch = {**schema.zeros(schema.ITEM_FIELDS, 1, window, max_length),
             **schema.zeros(schema.QUERY_FIELDS, 1, window, max_length)}
    tree = jax.eval_shape(lambda: model.init(jax.random.key(0), batch, train=False))
    return {"/".join(k): tuple(v.shape) for k, v in traverse_util.flatten_dict(tree).items()}


def convert(state_dict: Mapping[str, np.ndarray], hparams: Mapping[str, Any], *,
            text_config: BertConfig | None = None, source: Any = "checkpoint") -> Conversion:
    """State dict + hyper-parameters -> Conversion; every problem is named in one ConversionError."""
    model = build_model(state_dict, hparams, text_config, source)
    max_length = int(setting(hparams, "sentence_features.max_sentence_tokens"))
    targets = key_map(state_dict, model)
    shapes = expected_shapes(model, max_length)
    flat: dict[str, np.ndarray] = {}
    origin: dict[str, str] = {}
    dropped: dict[str, str] = {}
    problems = [f"unmapped: {k} {tuple(state_dict[k].shape)}" for k in state_dict if k not in targets]
    problems += [f"missing: {k}" for k, ts in targets.items() if k not in state_dict and any(t.path for t in ts)]
    explained = {t.path for k, ts in targets.items() if k not in state_dict for t in ts if t.path}
    for key, key_targets in targets.items():
        if key not in state_dict:
            continue
        for target in key_targets:
            if target.path is None:
                dropped[key] = target.note
                continue
            try:
                flat[target.path] = target.rule.apply(state_dict[key])
            except (ValueError, ConversionError) as error:
                problems.append(f"mis-shaped: {key} {tuple(state_dict[key].shape)} ({target.rule.name}: {error})")
                explained.add(target.path)
                continue
            origin[target.path] = key
    problems += [f"missing: {path} (no PyTorch key maps to it)" for path in shapes
                 if path not in flat and path not in explained]
    problems += [f"unexpected: {origin[path]} -> {path} (not a variable of this architecture)"
                 for path in flat if path not in shapes]
    problems += [f"mis-shaped: {origin[path]} {tuple(state_dict[origin[path]].shape)} -> {path} "
                 f"{flat[path].shape}, expected {shapes[path]}"
                 for path in flat if path in shapes and flat[path].shape != shapes[path]]
    if "posencode.pe" in state_dict:
        pe = np.asarray(state_dict["posencode.pe"], np.float32).reshape(-1, model.pooling.dim)
        diff = float(np.abs(pe - sinusoidal_positions(*pe.shape)).max())
        if diff > POSITION_TOLERANCE:
            problems.append(f"posencode.pe differs from the fixed sinusoid table by {diff:.3g} "
                            "(a learned position table is not implemented)")
    if problems:
        raise ConversionError(f"{source} does not fit the architecture it declares ({len(problems)} problems):"
                              "\n  " + "\n  ".join(problems))
    notes = []
    if setting(hparams, "projection_dropout"):
        notes.append("projection_dropout > 0: the authors' F.dropout call is active even in eval mode; "
                      "this model applies none at inference")
    if setting(hparams, "audio_features.sequence_model.audio_token_dropout"):
        notes.append("audio_token_dropout (training only) is not implemented")
    return Conversion(model, weights.unflatten(flat), dict(hparams), dropped, notes, max_length)


def tokenizer_dir(vocab: str | pathlib.Path | None, config: BertConfig, hparams, into: pathlib.Path) -> pathlib.Path:
    """A folder with the tokenizer files: ``vocab`` (a vocab.txt or a tokenizer folder), else the
    packaged MiniLM vocab, which is bert-base/large-uncased's, when the model is one of those."""
    into.mkdir(parents=True, exist_ok=True)
    if vocab is not None:
        vocab = pathlib.Path(vocab)
        if vocab.is_dir():
            return vocab
        if not vocab.is_file():
            raise FileNotFoundError(f"{vocab}: vocab file not found")
        shutil.copyfile(vocab, into / "vocab.txt")
        return into
    name = setting(hparams, "sentence_features.model")
    if name in UNCASED_BERTS and config.vocab_size == BERT_VOCAB_SIZE:
        shutil.copyfile(text.minilm_package_dir() / "vocab.txt", into / "vocab.txt")
        return into
    raise ConversionError(f"the text encoder {name!r} (vocab {config.vocab_size}) needs its vocab.txt: pass --vocab")


def training_clip_seconds(hparams: Mapping[str, Any]) -> float:
    """The clip length the run trained on. Their get_data_set (dcase2024/train.py) zero-pads or crops
    every clip to 10 s for ``train_on = "audiocaps"`` and to 30 s otherwise (Clotho, WavCaps, "all").
    It matters beyond speed: their global token is the mean over all window tokens, padding
    included, so a recording gives their embedding only when padded to that length."""
    return 10.0 if setting(hparams, "train_on") == "audiocaps" else 30.0


def convert_file(src: str | pathlib.Path, dst: str | pathlib.Path, *, text_config: str | pathlib.Path | None = None,
                 vocab: str | pathlib.Path | None = None, hparams: str | pathlib.Path | None = None,
                 segment_seconds: float | None = None) -> Conversion:
    """Reads SRC (Lightning .ckpt, bare state dict or .safetensors), converts it and writes the model
    directory DST (``model_dir`` format, loadable by ``model_dir.load``). ``segment_seconds``: the
    length recordings are padded or cut to (default: the run's training clip length)."""
    state_dict, hyper_parameters, extras = read(src, hparams)
    config = None
    if text_config is not None:
        config = BertConfig.from_hf(json.loads(pathlib.Path(text_config).read_text()), dropout=BERT_DROPOUT)
    conversion = convert(state_dict, hyper_parameters, text_config=config, source=src)
    with tempfile.TemporaryDirectory() as tmp:
        folder = tokenizer_dir(vocab, conversion.model.text, hyper_parameters, pathlib.Path(tmp))
        tokens = text.Tokenizer.from_pretrained(folder, conversion.max_length).vocab_size
        if tokens != conversion.model.text.vocab_size:
            raise ConversionError(f"the vocab in {vocab or folder} has {tokens} entries, the text encoder "
                                  f"{conversion.model.text.vocab_size}: not its vocab")
        card = {
            "converted_from": str(pathlib.Path(src).resolve()),
            "original_code": ORIGIN,
            "hyper_parameters": conversion.hyper_parameters,
            "dropped_keys": conversion.dropped,
            "notes": conversion.notes,
            **{k: v for k, v in extras.items() if isinstance(v, (int, float, str))},
        }
        model_dir.save(dst, conversion.model, conversion.variables, folder, max_length=conversion.max_length,
                       card=card, segment_seconds=segment_seconds or training_clip_seconds(hyper_parameters))
    return conversion


def summary(conversion: Conversion) -> str:
    """One line per setting that was read, for the command's output."""
    m = conversion.model
    return (f"MobileNet width {m.audio.width_mult}, {m.audio.tokens} tokens, {m.audio.window_seconds:g} s windows; "
            f"pooling {m.pooling.num_layers} x d{m.pooling.dim} ({m.pooling.num_heads} heads, ff {m.pooling.mlp_dim}); "
            f"BERT {m.text.num_hidden_layers} x {m.text.hidden_size}; fusion {m.fusion}"
            f"{' (separate metadata encoder)' if m.separate_metadata_encoder else ''}; space {m.embed_dim}; "
            f"tau {m.initial_temperature:g}; {len(conversion.dropped)} keys dropped on purpose")
