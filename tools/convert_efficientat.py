"""Converts an EfficientAT mn* checkpoint (.pt or .safetensors) into a hybrid_jax weights directory.

    .venv/bin/python tools/convert_efficientat.py mn40_as_ext_mAP_487.pt weights/mn40 --model mn40_as_ext
    .venv/bin/python tools/convert_efficientat.py state_dict.safetensors weights/mn04  # width inferred

Without --model or --width the width is inferred from the tensor shapes; --model also sets the
front end of the hop/mel variants (e.g. mn10_as_hop_5). Load the result with
``hybrid_jax.models.pretrained.load_audio_encoder(DST)``.
"""
from __future__ import annotations

import argparse
import json
import sys

from hybrid_jax.convert import efficientat as convert_efficientat
from hybrid_jax.convert.state_dict import CheckpointError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", help="PyTorch checkpoint (.pt/.pth/.bin) or .safetensors state dict")
    parser.add_argument("dst", help="output directory (variables.safetensors + config.json)")
    group = parser.add_mutually_exclusive_group()
    group.add_argument("--model", help="released EfficientAT name, e.g. mn40_as_ext or mn10_as_hop_5")
    group.add_argument("--width", type=float, help="width multiplier, e.g. 4.0 for mn40")
    args = parser.parse_args(argv)
    try:
        config = convert_efficientat.convert_file(args.src, args.dst, args.model, args.width)
    except (CheckpointError, convert_efficientat.ConversionError, OSError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {args.dst}: {json.dumps(config)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
