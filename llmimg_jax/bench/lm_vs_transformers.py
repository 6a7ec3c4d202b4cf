"""LM sampling tokens/s with a KV cache: ours (one compiled while loop) vs transformers' GPT2LMHeadModel.generate.

Both sides run the same weights (ours exported with `hf_gpt2.export_hf_gpt2`), batch, prompt length and number
of new tokens; plain multinomial sampling at temperature 1 (no top-k/top-p filter), no early stop.
"""

from __future__ import annotations

import tempfile
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from llmimg_jax.bench.rows import Row, alternate, skipped_row, torch_setup
from llmimg_jax.text.gpt2 import GPT2, gpt2_config, init_params
from llmimg_jax.text.hf_gpt2 import export_hf_gpt2
from llmimg_jax.text.sampling import generate, generate_naive

GROUP = "LM sampling vs transformers"


def jax_lm_sampler(model: GPT2, params: Any, prompts: np.ndarray, new_tokens: int,
                   naive: bool = False) -> Callable[[], Any]:
    """Closure sampling `new_tokens` per prompt row with our KV cache (or the re-run-the-prefix sampler)."""
    sampler = generate_naive if naive else generate
    return lambda: sampler(model, params, prompts, None, max_new_tokens=new_tokens, rng=jax.random.key(2),
                           temperature=1.0, eos_id=None)


def lm_train_step(model: GPT2, tx: optax.GradientTransformation) -> Callable:
    """jitted step(params, opt_state, ids [B, T+1]) -> (params, opt_state, loss): next-token cross-entropy."""
    def loss_fn(params, ids):
        logp = jax.nn.log_softmax(model.apply({"params": params}, ids[:, :-1]).astype(jnp.float32), -1)
        return -jnp.mean(jnp.take_along_axis(logp, ids[:, 1:, None], -1))

    @jax.jit
    def step(params, opt_state, ids):
        loss, grads = jax.value_and_grad(loss_fn)(params, ids)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step


def torch_lm_sampler(model: GPT2, params: Any, prompts: np.ndarray, new_tokens: int) -> Callable[[], Any]:
    torch = torch_setup()
    import transformers

    transformers.logging.disable_progress_bar()
    with tempfile.TemporaryDirectory() as tmp:
        # No BOS/EOS in the config: random weights over a small vocabulary, and no early stop wanted.
        path = export_hf_gpt2(model.config, params, tmp, bos_token_id=None, eos_token_id=None)
        hf = transformers.GPT2LMHeadModel.from_pretrained(path).eval()
    ids = torch.from_numpy(prompts.astype(np.int64))
    mask = torch.ones_like(ids)

    def run():
        with torch.inference_mode():
            return hf.generate(ids, attention_mask=mask, do_sample=True, temperature=1.0, top_k=0, top_p=1.0,
                               max_new_tokens=new_tokens, min_new_tokens=new_tokens, use_cache=True,
                               pad_token_id=0, eos_token_id=None)
    return run


def run(preset: str, batch: int, prompt_len: int, new_tokens: int, repeats: int) -> list[Row]:
    model = GPT2(gpt2_config(preset))
    params = init_params(model, jax.random.key(0))
    n_params = sum(int(np.prod(p.shape)) for p in jax.tree.leaves(params))
    prompts = np.random.default_rng(1).integers(0, model.config.vocab_size, (batch, prompt_len)).astype(np.int32)
    setting = (f"GPT-2 {preset} ({n_params / 1e6:.1f} M params, random weights), batch {batch}, prompt "
               f"{prompt_len}, {new_tokens} new tokens, KV cache")
    try:
        peer = torch_lm_sampler(model, params, prompts, new_tokens)
    except ImportError as e:
        return [skipped_row(GROUP, setting, e)]
    t = alternate({"ours": jax_lm_sampler(model, params, prompts, new_tokens), "peer": peer}, repeats)
    ours, theirs = batch * new_tokens / t["ours"], batch * new_tokens / t["peer"]
    return [Row(GROUP, setting, f"{ours:.0f} tok/s", f"{theirs:.0f} tok/s", ours / theirs,
                dict(preset=preset, ours_s=t["ours"], peer_s=t["peer"], ours_first_s=t["ours_first"]))]
