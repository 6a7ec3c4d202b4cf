"""Benchmark GPT-2: tokens/s of KV-cache sampling vs the naive re-run-the-prefix sampler, and train tokens/s.

    python scripts/bench_lm.py            # presets tiny and gpt2
    python scripts/bench_lm.py --quick    # tiny only, short runs (a smoke test)

Prints a markdown table. Times are medians over --repeats alternating runs after one compiling run; random
weights. The samplers are those of llmimg_jax/bench/lm_vs_transformers.py, whose row in
`python -m llmimg_jax.bench` compares the KV-cache sampler with transformers' generate.
"""

from __future__ import annotations

import argparse

import jax
import numpy as np
import optax

from llmimg_jax.bench.lm_vs_transformers import jax_lm_sampler, lm_train_step
from llmimg_jax.bench.rows import alternate
from llmimg_jax.text.gpt2 import GPT2, gpt2_config, init_params


def bench_preset(preset: str, args: argparse.Namespace) -> dict:
    model = GPT2(gpt2_config(preset))
    params = init_params(model, jax.random.key(0))
    vocab = model.config.vocab_size
    prompts = np.random.default_rng(1).integers(0, vocab, (args.batch, args.prompt_len)).astype(np.int32)
    t = alternate({"kv": jax_lm_sampler(model, params, prompts, args.new_tokens),
                   "naive": jax_lm_sampler(model, params, prompts, args.new_tokens, naive=True)}, args.repeats)
    row = {"preset": preset, "params": f"{sum(x.size for x in jax.tree.leaves(params)) / 1e6:.1f}M"}
    for name in ("kv", "naive"):
        row[f"{name}_tok_s"] = args.batch * args.new_tokens / t[name]
        row[f"{name}_compile_s"] = t[f"{name}_first"] - t[name]

    tx = optax.adamw(1e-4)
    step = lm_train_step(model, tx)
    ids = jax.random.randint(jax.random.key(3), (args.train_batch, args.train_len + 1), 0, vocab)
    state = {"params": params, "opt": tx.init(params)}

    def train_once():
        state["params"], state["opt"], loss = step(state["params"], state["opt"], ids)
        return loss

    t = alternate({"train": train_once}, args.repeats)
    row["train_tok_s"] = args.train_batch * args.train_len / t["train"]
    row["train_compile_s"] = t["train_first"] - t["train"]
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--presets", default="tiny,gpt2")
    parser.add_argument("--quick", action="store_true", help="tiny preset only, short sequences, 2 repeats")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--prompt-len", type=int, default=16)
    parser.add_argument("--new-tokens", type=int, default=32)
    parser.add_argument("--train-batch", type=int, default=4)
    parser.add_argument("--train-len", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()
    if args.quick:
        args.presets, args.new_tokens, args.train_len, args.repeats = "tiny", 16, 32, 2

    print(f"devices: {jax.devices()}; sampling batch {args.batch}, prompt {args.prompt_len}, "
          f"{args.new_tokens} new tokens; training batch {args.train_batch} x {args.train_len} tokens (AdamW)\n")
    print("| preset | params | KV-cache sample tok/s | naive sample tok/s | speed-up | train tok/s | "
          "compile s (kv / naive / train) |")
    print("| --- | --- | --- | --- | --- | --- | --- |")
    for preset in args.presets.split(","):
        r = bench_preset(preset, args)
        print(f"| {r['preset']} | {r['params']} | {r['kv_tok_s']:.0f} | {r['naive_tok_s']:.0f} | "
              f"{r['kv_tok_s'] / r['naive_tok_s']:.1f}x | {r['train_tok_s']:.0f} | "
              f"{r['kv_compile_s']:.1f} / {r['naive_compile_s']:.1f} / {r['train_compile_s']:.1f} |", flush=True)


if __name__ == "__main__":
    main()
