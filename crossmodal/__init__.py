"""crossmodal: JAX/Flax cross-modal learning."""
