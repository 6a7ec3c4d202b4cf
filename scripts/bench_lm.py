"""Benchmark GPT-2: tokens/s of KV-cache sampling vs the naive re-run-the-prefix sampler, and train tokens/s.

    python scripts/bench_lm.py            # presets tiny and gpt2
    python scripts/bench_lm.py --quick    # tiny only, short runs (a smoke test)

Prints a markdown table. Times are medians over --repeats runs after one compiling run; random weights.
"""

from __future__ import annotations

import argparse
import statistics
import time

import jax
import jax.numpy as jnp
import optax

from llmimg_jax.text.gpt2 import GPT2, gpt2_config, init_params
from llmimg_jax.text.sampling import generate, generate_naive


def _median_seconds(fn, repeats: int) -> tuple[float, float]:
    """(compile + first run seconds, median seconds of the following runs)."""
    start = time.perf_counter()
    jax.block_until_ready(fn())
    first = time.perf_counter() - start
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(fn())
        times.append(time.perf_counter() - start)
    return first, statistics.median(times)


def _train_step_fn(model: GPT2, tx: optax.GradientTransformation):
    def loss_fn(params, ids):
        logits = model.apply({"params": params}, ids[:, :-1])
        logp = jax.nn.log_softmax(logits, -1)
        return -jnp.mean(jnp.take_along_axis(logp, ids[:, 1:, None], -1))

    @jax.jit
    def step(params, opt_state, ids):
        loss, grads = jax.value_and_grad(loss_fn)(params, ids)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step


def bench_preset(preset: str, args: argparse.Namespace) -> dict:
    model = GPT2(gpt2_config(preset))
    params = init_params(model, jax.random.key(0))
    n_params = sum(x.size for x in jax.tree.leaves(params))
    vocab = model.config.vocab_size
    prompts = jax.random.randint(jax.random.key(1), (args.batch, args.prompt_len), 0, vocab)
    sample_args = dict(max_new_tokens=args.new_tokens, rng=jax.random.key(2), temperature=1.0)
    new_tokens = args.batch * args.new_tokens

    row = {"preset": preset, "params": f"{n_params / 1e6:.1f}M"}
    for name, sampler in (("kv", generate), ("naive", generate_naive)):
        first, sec = _median_seconds(lambda: sampler(model, params, prompts, None, **sample_args), args.repeats)
        row[f"{name}_tok_s"], row[f"{name}_compile_s"] = new_tokens / sec, first - sec

    tx = optax.adamw(1e-4)
    step = _train_step_fn(model, tx)
    ids = jax.random.randint(jax.random.key(3), (args.train_batch, args.train_len + 1), 0, vocab)
    state = {"params": params, "opt": tx.init(params)}

    def train_once():
        state["params"], state["opt"], loss = step(state["params"], state["opt"], ids)
        return loss

    first, sec = _median_seconds(train_once, args.repeats)
    row["train_tok_s"], row["train_compile_s"] = args.train_batch * args.train_len / sec, first - sec
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
