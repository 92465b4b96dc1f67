"""PyTorch checkpoints -> Flax variables without torch: the safe state-dict reader, tensor rules, converters."""
