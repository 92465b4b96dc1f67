"""Converts EfficientAT ``mn*`` PyTorch state dicts into Flax variables: a key map plus tensor rules.

The expected keys are derived from the channel plan (blocks without an expansion conv shift the
sub-layer indices), each mapped to a Flax variable path and a named layout rule. Unknown, missing
and mis-shaped keys are all reported in one error; only ``num_batches_tracked`` is dropped silently.
"""
from __future__ import annotations

import dataclasses
import pathlib
import re
from typing import Any, NamedTuple, Optional

import numpy as np

from hybrid_jax.convert import weights
from hybrid_jax.convert.rules import (
    CONV_OIHW_TO_HWIO,
    COPY,
    DEPTHWISE_OIHW_TO_HWIO,
    LINEAR_TO_DENSE,
    ConversionError,
    TensorRule,
)
from hybrid_jax.convert.state_dict import read_state_dict
from hybrid_jax.models import mobilenet
from hybrid_jax.models.frontend import MelConfig

WIDTHS = {"mn01": 0.1, "mn02": 0.2, "mn04": 0.4, "mn05": 0.5, "mn06": 0.6, "mn08": 0.8, "mn10": 1.0,
          "mn12": 1.2, "mn14": 1.4, "mn16": 1.6, "mn20": 2.0, "mn30": 3.0, "mn40": 4.0}
# Released checkpoints of the plain network with the default front end (EfficientAT get_model names).
PLAIN_RELEASES = (
    "mn01_as", "mn02_as", "mn04_as", "mn05_as", "mn10_as", "mn20_as", "mn30_as", "mn40_as",
    "mn40_as(2)", "mn40_as(3)", "mn40_as_ext", "mn40_as_ext(2)", "mn40_as_ext(3)",
    "mn40_as_no_im_pre", "mn40_as_no_im_pre(2)", "mn40_as_no_im_pre(3)",
    "mn01_im", "mn02_im", "mn04_im", "mn05_im", "mn10_im", "mn20_im", "mn30_im", "mn40_im",
    "mn10_im_pytorch",
)
# Same network, other front end: hop in ms at 32 kHz, or the number of mel bands.
HOP_RELEASES = {"mn10_as_hop_5": 160, "mn10_as_hop_15": 480, "mn10_as_hop_20": 640,
                "mn10_as_hop_25": 800}
MEL_RELEASES = {"mn10_as_mels_40": 40, "mn10_as_mels_64": 64, "mn10_as_mels_256": 256}
IGNORED_SUFFIX = ".num_batches_tracked"


BN_RENAMES = {
    "weight": ("params", "scale"),
    "bias": ("params", "bias"),
    "running_mean": ("batch_stats", "mean"),
    "running_var": ("batch_stats", "var"),
}


class Entry(NamedTuple):
    path: tuple[str, ...]  # Flax variable path, collection first
    rule: TensorRule
    shape: tuple[int, ...]  # expected PyTorch shape


def _conv_bn(torch_prefix: str, flax_path: tuple[str, ...], rule: TensorRule, shape) -> dict[str, Entry]:
    entries = {f"{torch_prefix}.0.weight": Entry(("params", *flax_path, "conv", "kernel"), rule, shape)}
    for torch_name, (collection, flax_name) in BN_RENAMES.items():
        path = (collection, *flax_path, "bn", flax_name)
        entries[f"{torch_prefix}.1.{torch_name}"] = Entry(path, COPY, (shape[0],))
    return entries


def _linear(torch_prefix: str, flax_path: tuple[str, ...], out_features: int, in_features: int):
    return {
        f"{torch_prefix}.weight": Entry(("params", *flax_path, "kernel"), LINEAR_TO_DENSE,
                                        (out_features, in_features)),
        f"{torch_prefix}.bias": Entry(("params", *flax_path, "bias"), COPY, (out_features,)),
    }


def key_map(width_mult: float, num_classes: int = 527) -> dict[str, Entry]:
    """Every expected PyTorch key of ``mn*`` at this width -> (Flax path, rule, PyTorch shape)."""
    plan = mobilenet.channel_plan(width_mult)
    entries = _conv_bn("features.0", ("features_0",), CONV_OIHW_TO_HWIO, (plan.stem, 1, 3, 3))
    for index, block in enumerate(plan.blocks, start=1):
        for j, layer in enumerate(block.layers):
            prefix, path = f"features.{index}.block.{j}", (f"features_{index}", f"block_{j}")
            if layer == "expand":
                entries |= _conv_bn(prefix, path, CONV_OIHW_TO_HWIO, (block.expanded, block.inp, 1, 1))
            elif layer == "depthwise":
                k = block.spec.kernel
                entries |= _conv_bn(prefix, path, DEPTHWISE_OIHW_TO_HWIO, (block.expanded, 1, k, k))
            elif layer == "se":
                se_prefix, se_path = f"{prefix}.conc_se_layers.0", (*path, "conc_se_layers_0")
                entries |= _linear(f"{se_prefix}.fc1", (*se_path, "fc1"), block.squeeze, block.expanded)
                entries |= _linear(f"{se_prefix}.fc2", (*se_path, "fc2"), block.expanded, block.squeeze)
            else:
                entries |= _conv_bn(prefix, path, CONV_OIHW_TO_HWIO, (block.out, block.expanded, 1, 1))
    last = len(plan.blocks) + 1
    entries |= _conv_bn(f"features.{last}", (f"features_{last}",), CONV_OIHW_TO_HWIO,
                        (plan.last_conv, plan.blocks[-1].out, 1, 1))
    if num_classes:
        entries |= _linear("classifier.2", ("classifier_2",), plan.head_hidden, plan.last_conv)
        entries |= _linear("classifier.5", ("classifier_5",), num_classes, plan.head_hidden)
    return entries


def _check_architecture(state_dict, source) -> None:
    if "classifier.0.weight" in state_dict and "classifier.2.weight" not in state_dict:
        raise ConversionError(f"{source}: a '_fc' (conv + BN) classifier head is not supported; "
                              "only the mlp head of the plain mn* models is")
    if "features.0.0.weight" not in state_dict:
        raise ConversionError(f"{source}: no 'features.0.0.weight': not a plain EfficientAT mn* "
                              "state dict (DyMN and other architectures are not supported)")


def num_classes_of(state_dict: dict[str, np.ndarray]) -> int:
    weight = state_dict.get("classifier.5.weight")
    return 527 if weight is None else int(weight.shape[0])


def infer_width(state_dict: dict[str, np.ndarray], source: Any = "state dict") -> float:
    """The width whose full channel plan matches every tensor shape; raises if none or several."""
    _check_architecture(state_dict, source)
    num_classes = num_classes_of(state_dict)
    matches = [
        width for width in WIDTHS.values()
        if all(key in state_dict and tuple(state_dict[key].shape) == entry.shape
               for key, entry in key_map(width, num_classes).items())
    ]
    if len(matches) == 1:
        return matches[0]
    stem = tuple(state_dict["features.0.0.weight"].shape)
    if not matches:
        raise ConversionError(f"{source}: no mn* width matches its tensor shapes (stem weight {stem}); "
                              "pass --width to see which keys differ")
    raise ConversionError(f"{source}: ambiguous width, widths {matches} all match; pass --width")


def convert(state_dict: dict[str, np.ndarray], width_mult: float, num_classes: int = 527,
            source: Any = "state dict") -> dict[str, Any]:
    """PyTorch state dict -> Flax variables {"params": ..., "batch_stats": ...} (float32)."""
    _check_architecture(state_dict, source)
    expected = key_map(width_mult, num_classes)
    given = {k: v for k, v in state_dict.items() if not k.endswith(IGNORED_SUFFIX)}
    missing = [k for k in expected if k not in given]
    unknown = [k for k in given if k not in expected]
    wrong = [f"{k}: {tuple(given[k].shape)} instead of {entry.shape}"
             for k, entry in expected.items() if k in given and tuple(given[k].shape) != entry.shape]
    if missing or unknown or wrong:
        problems = [f"{len(missing)} missing: {missing}"] if missing else []
        problems += [f"{len(unknown)} unknown: {unknown}"] if unknown else []
        problems += [f"{len(wrong)} with the wrong shape: {wrong}"] if wrong else []
        raise ConversionError(f"{source} does not fit mn width {width_mult} with {num_classes} "
                              f"classes; " + "; ".join(problems))
    flat = {"/".join(entry.path): entry.rule.apply(given[key]) for key, entry in expected.items()}
    return weights.unflatten(flat)


def release_settings(name: str) -> tuple[float, MelConfig]:
    """A released EfficientAT name (e.g. "mn40_as_ext", "mn10_as_hop_5") -> (width, front end)."""
    name = re.sub(r"(_mAP_\d+)?(\.pt)?$", "", name)  # accept release file names too
    if name.startswith("dymn") or "_fc" in name:
        raise ConversionError(f"{name}: DyMN and '_fc' head models are not supported; only the plain "
                              "mn* models with the mlp head are")
    if name in PLAIN_RELEASES:
        return WIDTHS[name[:4]], MelConfig()
    if name in HOP_RELEASES:
        return WIDTHS[name[:4]], MelConfig(hop_length=HOP_RELEASES[name])
    if name in MEL_RELEASES:
        return WIDTHS[name[:4]], MelConfig(n_mels=MEL_RELEASES[name])
    known = (*PLAIN_RELEASES, *HOP_RELEASES, *MEL_RELEASES)
    raise ConversionError(f"unknown model name {name!r}; known: {', '.join(known)}")


def convert_file(src: str | pathlib.Path, dst: str | pathlib.Path, model: Optional[str] = None,
                 width_mult: Optional[float] = None) -> dict[str, Any]:
    """Reads SRC (.pt/.safetensors), converts, writes DST with ``weights.save``; returns the config."""
    if model is not None and width_mult is not None:
        raise ConversionError("give either a model name or a width, not both")
    state_dict = read_state_dict(src)
    mel_config = MelConfig()
    if model is not None:
        width_mult, mel_config = release_settings(model)
    elif width_mult is None:
        width_mult = infer_width(state_dict, src)
    num_classes = num_classes_of(state_dict)
    variables = convert(state_dict, width_mult, num_classes, src)
    config = {
        "width_mult": width_mult,
        "num_classes": num_classes,
        "head": "mlp",
        "mel": dataclasses.asdict(mel_config),
        "source": str(pathlib.Path(src).resolve()),
        "model_name": model,
    }
    weights.save(dst, variables, config)
    return config
