"""Reading a local Hugging Face model directory: `config.json` and safetensors weights (single or sharded).

Shared by the GPT-2 and BERT importers; each one maps names with a `TensorReader`, which records the tensors
it used so that the rest can be reported in one warning.
"""

from __future__ import annotations

import json
import os
import warnings

import numpy as np
import safetensors

from llmimg_jax.errors import UserError


def read_hf_config(path: str, kind: str) -> dict:
    """The config.json dict of a local Hugging Face directory; `kind` (e.g. 'GPT-2') names the model in errors."""
    config_path = os.path.join(path, "config.json")
    if not os.path.isfile(config_path):
        raise UserError(f"'{path}' is not a Hugging Face model directory (config.json + model.safetensors); "
                        f"pass a local {kind} directory written by save_pretrained")
    with open(config_path) as f:
        return json.load(f)


def read_tensors(path: str) -> dict[str, np.ndarray]:
    """All tensors of `model.safetensors`, or of the shards listed in `model.safetensors.index.json`."""
    single = os.path.join(path, "model.safetensors")
    index = os.path.join(path, "model.safetensors.index.json")
    if os.path.isfile(single):
        files = [single]
    elif os.path.isfile(index):
        with open(index) as f:
            files = [os.path.join(path, name) for name in sorted(set(json.load(f)["weight_map"].values()))]
    else:
        raise UserError(f"'{path}' has no model.safetensors; save the model with save_pretrained(..., "
                        "safe_serialization=True)")
    tensors = {}
    for file in files:
        # numpy has no bfloat16: such tensors are read through JAX and widened to float32.
        with safetensors.safe_open(file, framework="numpy") as f, safetensors.safe_open(file, framework="flax") as g:
            for key in f.keys():
                if f.get_slice(key).get_dtype() == "BF16":
                    tensors[key] = np.asarray(g.get_tensor(key).astype(np.float32))
                else:
                    tensors[key] = f.get_tensor(key)
    return tensors


class TensorReader:
    """float32 tensors by name (after removing `strip_prefix`), remembering which ones were read."""

    def __init__(self, tensors: dict[str, np.ndarray], model_name: str, strip_prefix: str = ""):
        self.tensors = {k.removeprefix(strip_prefix): v for k, v in tensors.items()}
        self.model_name = model_name
        self.used: set[str] = set()

    def __contains__(self, key: str) -> bool:
        return key in self.tensors

    def get(self, key: str) -> np.ndarray:
        if key not in self.tensors:
            raise UserError(f"{self.model_name} checkpoint lacks tensor '{key}'; "
                            f"is it a complete {self.model_name} model?")
        self.used.add(key)
        return np.asarray(self.tensors[key], np.float32)

    def layer_norm(self, name: str) -> dict[str, np.ndarray]:
        """The scale and bias of the LayerNorm `name` (its `.weight` and `.bias`)."""
        return {"scale": self.get(f"{name}.weight"), "bias": self.get(f"{name}.bias")}

    def warn_unused(self, ignore_prefixes: tuple[str, ...] = (), ignore_suffixes: tuple[str, ...] = ()) -> None:
        """One warning naming the tensors never read, except the known ones to ignore (buffers, unused heads)."""
        skipped = [k for k in self.tensors if k not in self.used
                   and not k.startswith(ignore_prefixes) and not k.endswith(ignore_suffixes)]
        if skipped:
            # stacklevel 3: the caller of the importer that owns this reader.
            warnings.warn(f"skipped {len(skipped)} unknown tensor(s) in the {self.model_name} checkpoint "
                          f"(not used by the model, e.g. a task head): {skipped[:5]}", stacklevel=3)
