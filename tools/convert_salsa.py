"""Converts a checkpoint of the authors' code (OptimusPrimus/salsa AudioRetrievalModel) into a model directory.

    .venv/bin/python tools/convert_salsa.py model.ckpt OUT_DIR [--text-config config.json] [--vocab vocab.txt]
    .venv/bin/python tools/convert_salsa.py model.safetensors OUT_DIR --hparams config.json --vocab vocab.txt

Reads a Lightning .ckpt (the state dict plus its hyper_parameters), a bare torch state dict or a
.safetensors file, without torch and without running pickled code. The architecture comes from the
hyper-parameters (--hparams for a bare state dict: the run's JSON config or Lightning's
hparams.yaml) and the tensor shapes; the BERT config from --text-config (a Hugging Face config.json)
or the shapes; the vocab from --vocab (bert-base/large-uncased: the packaged one if omitted).
Load the result with ``hybrid_jax.model_dir.load(OUT_DIR)``.
"""
from __future__ import annotations

import argparse
import sys

from hybrid_jax.convert import salsa
from hybrid_jax.convert.rules import ConversionError
from hybrid_jax.convert.state_dict import CheckpointError


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("src", help="Lightning .ckpt, torch state dict (.pt/.bin) or .safetensors")
    parser.add_argument("dst", help="output model directory")
    parser.add_argument("--text-config", help="Hugging Face config.json of the text encoder (default: from shapes)")
    parser.add_argument("--vocab", help="vocab.txt (or a tokenizer folder) of the text encoder")
    parser.add_argument("--hparams", help="the run's hyper-parameters (JSON or hparams.yaml); needed for bare state dicts")
    parser.add_argument("--segment-seconds", type=float, help="length recordings are padded or cut to when "
                        "embedded (default: the run's training clip length, 10 s for AudioCaps, else 30 s)")
    args = parser.parse_args(argv)
    try:
        conversion = salsa.convert_file(args.src, args.dst, text_config=args.text_config, vocab=args.vocab,
                                        hparams=args.hparams, segment_seconds=args.segment_seconds)
    except (CheckpointError, ConversionError, FileNotFoundError) as error:
        print(f"error: {error}", file=sys.stderr)
        return 1
    print(f"wrote {args.dst}: {salsa.summary(conversion)}")
    for note in conversion.notes:
        print(f"note: {note}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
