"""llmimg_jax: language-model-driven text-to-image generation in JAX/Flax."""

__version__ = "0.1.0"
