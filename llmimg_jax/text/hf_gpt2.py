"""Hugging Face GPT-2 interop: a local `config.json` + `model.safetensors` directory <-> our GPT2 params.

Hugging Face stores GPT-2's linear layers as Conv1D with weights `[in, out]` (no transpose needed) and q/k/v
fused in `attn.c_attn` `[E, 3E]`; we split them into `[E, heads, kv]` kernels. Keys may carry a `transformer.`
prefix (GPT2LMHeadModel) or not (GPT2Model). The output head is tied to `wte`; an untied checkpoint is refused.

Workdir layout written by `import_hf_to_workdir(path, W)` (to be aligned with the runtime's checkpoints):
  W/lm_config.json   the GPT2Config fields
  W/params/          the params tree (per-layer layout h_0..), saved with orbax StandardCheckpointer
  W/tokenizer/       the tokenizer files found next to the model, if any
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from typing import Any

import jax
import numpy as np
import safetensors.numpy

from llmimg_jax.errors import UserError
from llmimg_jax.text.gpt2 import GPT2, GPT2Config, init_params, stack_layers, unstack_layers
from llmimg_jax.text.hf_checkpoint import TensorReader, read_hf_config, read_tensors

Params = Any

# HF config fields whose non-default value we cannot represent, with the value we support.
_REQUIRED = {
    "scale_attn_by_inverse_layer_idx": False,
    "scale_attn_weights": True,
    "add_cross_attention": False,
    "tie_word_embeddings": True,
}
_TANH_GELU = ("gelu_new", "gelu_pytorch_tanh")
# Non-parameter buffers some older checkpoints contain (the causal mask).
_BUFFER_SUFFIXES = (".attn.bias", ".attn.masked_bias")
_TOKENIZER_FILES = ("vocab.json", "merges.txt", "tokenizer.json", "tokenizer_config.json",
                    "special_tokens_map.json", "added_tokens.json")


def config_from_hf(hf: dict, **overrides: Any) -> GPT2Config:
    """GPT2Config from a Hugging Face config.json dict; unsupported settings are UserErrors naming the field."""
    if hf.get("model_type", "gpt2") != "gpt2":
        raise UserError(f"config.json has model_type '{hf.get('model_type')}', expected 'gpt2'")
    for field, supported in _REQUIRED.items():
        if field in hf and hf[field] != supported:
            raise UserError(f"unsupported GPT-2 config: {field}={hf[field]} (only {supported} is supported)")
    if hf.get("activation_function", "gelu_new") not in _TANH_GELU:
        raise UserError(f"unsupported GPT-2 config: activation_function={hf['activation_function']!r} "
                        f"(only {' or '.join(_TANH_GELU)} is supported)")
    n_embd = hf.get("n_embd", 768)
    if hf.get("n_inner") not in (None, 4 * n_embd):
        raise UserError(f"unsupported GPT-2 config: n_inner={hf['n_inner']} (only null or 4*n_embd is supported)")
    kwargs = dict(vocab_size=hf.get("vocab_size", 50257), n_positions=hf.get("n_positions", 1024), n_embd=n_embd,
                  n_layer=hf.get("n_layer", 12), n_head=hf.get("n_head", 12),
                  layer_norm_epsilon=hf.get("layer_norm_epsilon", 1e-5))
    kwargs.update(overrides)  # dropout defaults to 0: an imported model is for inference or fine-tuning
    return GPT2Config(**kwargs)


def params_from_hf(tensors: dict[str, np.ndarray], config: GPT2Config) -> Params:
    """Our per-layer params tree from Hugging Face GPT-2 tensors (either key layout)."""
    reader = TensorReader(tensors, "GPT-2", strip_prefix="transformer.")
    get, norm = reader.get, reader.layer_norm
    E, H = config.n_embd, config.n_head
    D = E // H
    params = {"wte": {"embedding": get("wte.weight")}, "wpe": {"embedding": get("wpe.weight")},
              "ln_f": norm("ln_f")}
    for i in range(config.n_layer):
        p = f"h.{i}."
        w_qkv, b_qkv = get(p + "attn.c_attn.weight"), get(p + "attn.c_attn.bias")
        attn = {name: {"kernel": w_qkv[:, j * E:(j + 1) * E].reshape(E, H, D),
                       "bias": b_qkv[j * E:(j + 1) * E].reshape(H, D)}
                for j, name in enumerate(("query", "key", "value"))}
        attn["c_proj"] = {"kernel": get(p + "attn.c_proj.weight").reshape(H, D, E), "bias": get(p + "attn.c_proj.bias")}
        mlp = {name: {"kernel": get(f"{p}mlp.{name}.weight"), "bias": get(f"{p}mlp.{name}.bias")}
               for name in ("c_fc", "c_proj")}
        params[f"h_{i}"] = {"ln_1": norm(p + "ln_1"), "attn": attn, "ln_2": norm(p + "ln_2"), "mlp": mlp}

    if "lm_head.weight" in reader and not np.array_equal(get("lm_head.weight"), params["wte"]["embedding"]):
        raise UserError("GPT-2 checkpoint has an lm_head.weight different from wte.weight; only tied output "
                        "embeddings are supported")
    reader.warn_unused(ignore_suffixes=_BUFFER_SUFFIXES)
    if params["wte"]["embedding"].shape != (config.vocab_size, E):
        raise UserError(f"wte.weight has shape {params['wte']['embedding'].shape} but config.json says "
                        f"vocab_size={config.vocab_size}, n_embd={E}; the directory's files do not match")
    return params


def load_hf_gpt2(path: str, **overrides: Any) -> tuple[GPT2, Params]:
    """(model, params) from a local Hugging Face GPT-2 directory; overrides set GPT2Config fields
    (e.g. dtype='bfloat16', scan_layers=True)."""
    config = config_from_hf(read_hf_config(path, "GPT-2"), **overrides)
    params = params_from_hf(read_tensors(path), config)
    if config.scan_layers:
        params = stack_layers(params, config.n_layer)
    return GPT2(config), jax.tree.map(jax.numpy.asarray, params)


def hf_config(config: GPT2Config, **extra: Any) -> dict:
    """The Hugging Face config.json dict of our config (extra: e.g. bos_token_id, eos_token_id, pad_token_id)."""
    return dict(model_type="gpt2", architectures=["GPT2LMHeadModel"], vocab_size=config.vocab_size,
                n_positions=config.n_positions, n_embd=config.n_embd, n_layer=config.n_layer, n_head=config.n_head,
                n_inner=None, activation_function="gelu_new", layer_norm_epsilon=config.layer_norm_epsilon,
                resid_pdrop=config.dropout, embd_pdrop=config.dropout, attn_pdrop=config.dropout,
                scale_attn_weights=True, scale_attn_by_inverse_layer_idx=False, reorder_and_upcast_attn=False,
                tie_word_embeddings=True, **extra)


def export_hf_gpt2(model_config: GPT2Config, params: Params, out_dir: str, **hf_extra: Any) -> str:
    """Writes config.json + model.safetensors that GPT2LMHeadModel.from_pretrained(out_dir) loads."""
    cfg = model_config
    if cfg.scan_layers:
        params = unstack_layers(params, cfg.n_layer)
    params = jax.tree.map(lambda x: np.asarray(x, np.float32), params)
    E = cfg.n_embd
    t = {"transformer.wte.weight": params["wte"]["embedding"], "transformer.wpe.weight": params["wpe"]["embedding"],
         "transformer.ln_f.weight": params["ln_f"]["scale"], "transformer.ln_f.bias": params["ln_f"]["bias"]}
    for i in range(cfg.n_layer):
        p, h = f"transformer.h.{i}.", params[f"h_{i}"]
        a, qkv = h["attn"], ("query", "key", "value")
        t[p + "attn.c_attn.weight"] = np.concatenate([a[n]["kernel"].reshape(E, E) for n in qkv], 1)
        t[p + "attn.c_attn.bias"] = np.concatenate([a[n]["bias"].reshape(E) for n in qkv])
        t[p + "attn.c_proj.weight"] = a["c_proj"]["kernel"].reshape(E, E)
        t[p + "attn.c_proj.bias"] = a["c_proj"]["bias"]
        for name in ("ln_1", "ln_2"):
            t[f"{p}{name}.weight"], t[f"{p}{name}.bias"] = h[name]["scale"], h[name]["bias"]
        for name in ("c_fc", "c_proj"):
            t[f"{p}mlp.{name}.weight"] = h["mlp"][name]["kernel"]
            t[f"{p}mlp.{name}.bias"] = h["mlp"][name]["bias"]
    os.makedirs(out_dir, exist_ok=True)
    # lm_head.weight is omitted, as save_pretrained does for tied weights; "format": "pt" is what loaders expect.
    safetensors.numpy.save_file({k: np.ascontiguousarray(v) for k, v in t.items()},
                                os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    with open(os.path.join(out_dir, "config.json"), "w") as f:
        json.dump(hf_config(cfg, **hf_extra), f, indent=2)
    return out_dir


def import_hf_to_workdir(path: str, out_workdir: str) -> str:
    """Imports a local HF GPT-2 into `out_workdir` (layout in the module docstring); returns the params dir."""
    import orbax.checkpoint as ocp

    model, params = load_hf_gpt2(path)
    params_dir = os.path.abspath(os.path.join(out_workdir, "params"))
    if os.path.exists(params_dir):
        raise UserError(f"'{params_dir}' already exists; choose an empty --out directory")
    os.makedirs(out_workdir, exist_ok=True)
    with open(os.path.join(out_workdir, "lm_config.json"), "w") as f:
        json.dump(dataclasses.asdict(model.config), f, indent=2)
    checkpointer = ocp.StandardCheckpointer()
    checkpointer.save(params_dir, params)
    checkpointer.wait_until_finished()
    found = [name for name in _TOKENIZER_FILES if os.path.isfile(os.path.join(path, name))]
    if found:
        os.makedirs(os.path.join(out_workdir, "tokenizer"), exist_ok=True)
        for name in found:
            shutil.copy(os.path.join(path, name), os.path.join(out_workdir, "tokenizer", name))
    return params_dir


def load_lm_workdir(workdir: str) -> tuple[GPT2, Params]:
    """(model, params) back from a directory written by `import_hf_to_workdir`."""
    import orbax.checkpoint as ocp

    config_path = os.path.join(workdir, "lm_config.json")
    if not os.path.isfile(config_path):
        raise UserError(f"'{workdir}' has no lm_config.json; create it with `llmimg lm import-hf DIR --out {workdir}`")
    with open(config_path) as f:
        model = GPT2(GPT2Config(**json.load(f)))
    sharding = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(lambda s: jax.ShapeDtypeStruct(s.shape, s.dtype, sharding=sharding),
                          jax.eval_shape(lambda: init_params(model, jax.random.key(0))))
    params = ocp.StandardCheckpointer().restore(os.path.abspath(os.path.join(workdir, "params")), target)
    return model, params
