"""Converts a Hugging Face BERT folder (or Hub id) into a hybrid_jax text-encoder directory.

    python tools/convert_bert.py SRC DST
    python tools/convert_bert.py bert-base-uncased weights/bert-base-uncased  # Hub id, online
    python tools/convert_bert.py \
        "$(python -c 'from hybrid_jax import text; print(text.minilm_package_dir())')" \
        weights/minilm

SRC holds config.json, model.safetensors or pytorch_model.bin (read without torch) and the
tokenizer files; DST gets variables.safetensors, config.json and the tokenizer files, loadable with
``hybrid_jax.models.pretrained.load_text_encoder(DST)``.
"""

from __future__ import annotations

import argparse
import sys

from hybrid_jax.convert import bert as convert_bert


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source", help="HF model folder (or Hub model id, needs internet)")
    parser.add_argument("destination", help="output directory")
    parser.add_argument("--tokenizer", help="folder with the tokenizer files, if SRC has none")
    parser.add_argument(
        "--max-length", type=int, default=32, help="tokens per sentence (paper: 32)"
    )
    args = parser.parse_args(argv)
    try:
        conversion = convert_bert.convert_checkpoint(
            args.source, args.destination, tokenizer=args.tokenizer, max_length=args.max_length
        )
    except (OSError, ValueError) as error:
        # Missing files, unreadable or hostile checkpoints (CheckpointError), mismatched tensors
        # (ConversionError) and bad config.json all name the file: one line, no traceback.
        print(f"error: {error}", file=sys.stderr)
        return 1
    count = sum(v.size for v in convert_bert.weights.flatten(conversion.variables).values())
    print(f"wrote {args.destination}: {count:,} parameters, pooler: {conversion.has_pooler}")
    if conversion.ignored:
        print(f"ignored {len(conversion.ignored)} keys outside BertModel (heads):")
        for key in conversion.ignored:
            print(f"  {key}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
