"""CPU-only kernels (shifted-sum depthwise, per-example kernel gradients) and the backend policy that picks them."""
