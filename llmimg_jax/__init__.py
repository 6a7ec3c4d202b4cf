"""llmimg_jax: language-model-driven text-to-image generation in JAX/Flax."""

from __future__ import annotations

__version__ = "0.1.0"
__all__ = ["TextToImagePipeline", "load_hf_gpt2"]


def __getattr__(name: str):
    # Imported on first use, so `import llmimg_jax` (and the CLI's start-up) stays light.
    if name == "load_hf_gpt2":
        from llmimg_jax.text.hf_gpt2 import load_hf_gpt2

        return load_hf_gpt2
    if name == "TextToImagePipeline":
        from llmimg_jax.pipeline import TextToImagePipeline

        return TextToImagePipeline
    raise AttributeError(f"module 'llmimg_jax' has no attribute '{name}'")
