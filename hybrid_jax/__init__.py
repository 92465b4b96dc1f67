"""hybrid_jax: JAX/Flax hybrid audio + metadata language-based audio retrieval."""
