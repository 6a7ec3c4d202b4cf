"""GPU check: numerics tests on the accelerator, bf16 speed with model FLOPs utilisation, sampling, peak memory.

    python scripts/gpu_check.py            # on one GPU: under 8 minutes on an H200; prints a table
    python scripts/gpu_check.py --pytest   # on CPU too: also run the test selections (slow there)

Rows: (1) the tests with a bfloat16 case, and the numerics tests at float32 with the highest matmul precision
(no TF32), run on the default device; (2) the diffusion train step at S = 64 (`base64` U-Net, bf16 compute,
AdamW) and (3) a `gpt2`-sized (124 M) text encoder / LM train step in bf16, each with MFU = XLA's cost-analysis
FLOPs / step time / the measured bf16 matmul peak; (4) 50-step DDIM sampling with guidance, images/s; peak
device memory (`memory_stats()`, the process peak after each row). Without a GPU the same code runs at tiny
shapes as a smoke test and says so; paste the table into benchmarks/RESULTS.md under "## GPU check".
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import optax

from llmimg_jax.bench.diffusion_vs_diffusers import make_jax_train
from llmimg_jax.bench.lm_vs_transformers import lm_train_step
from llmimg_jax.bench.sampling_vs_diffusers import jax_sampler
from llmimg_jax.generator.diffusion.unet import unet_config
from llmimg_jax.text.gpt2 import GPT2, gpt2_config, init_params
from llmimg_jax.timing import median_seconds

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
BF16_TESTS = ["tests/test_unet.py", "tests/test_gpt2.py", "tests/test_gan_modules.py", "tests/test_hf_gpt2.py",
              "tests/test_runtime_units.py", "-k", "bfloat16"]
NUMERICS_TESTS = ["tests/test_unet.py", "tests/test_samplers.py", "tests/test_diffusion_loss.py",
                  "tests/test_schedules.py", "tests/test_gpt2.py", "tests/test_sampling.py",
                  "tests/test_text_encoder.py", "tests/test_gan_modules.py"]
# (GPU, CPU smoke) sizes.
SIZES = {"matmul": (8192, 256), "unet": (("base64", 64, 128), ("tiny", 16, 2)),
         "lm": (("gpt2", 16, 1024), ("tiny", 2, 32)), "sample": (("base64", 64, 16, 50), ("tiny", 16, 2, 2))}


def peak_memory() -> str:
    stats = jax.devices()[0].memory_stats() or {}
    peak = stats.get("peak_bytes_in_use")
    return "n/a" if peak is None else f"{peak / 2**30:.1f} GiB"


def matmul_peak(n: int, repeats: int = 20) -> float:
    """Measured bf16 matmul FLOP/s (n x n x n), the denominator of MFU."""
    a = jax.random.normal(jax.random.key(0), (n, n), jnp.bfloat16)
    b = jax.random.normal(jax.random.key(1), (n, n), jnp.bfloat16)
    mm = jax.jit(lambda a, b: a @ b)
    return 2 * n ** 3 / median_seconds(lambda: mm(a, b), repeats)


def flops(jitted, *args) -> float:
    cost = jitted.lower(*args).compile().cost_analysis()
    cost = cost[0] if isinstance(cost, (list, tuple)) else cost
    return float(cost.get("flops", 0.0))


def timed_step(step, state: dict, extra, repeats: int) -> float:
    def once():
        state["params"], state["opt"], loss = step(state["params"], state["opt"], extra)
        return loss
    return median_seconds(once, repeats)


def unet_row(gpu: bool, peak: float, repeats: int) -> list[str]:
    preset, size, batch = SIZES["unet"][0 if gpu else 1]
    step, state = make_jax_train(unet_config(preset, dtype="bfloat16"), size, batch)
    key = jax.random.key(1)
    f = flops(step, state["params"], state["opt"], key)
    seconds = timed_step(step, state, key, repeats)
    return [f"diffusion train step, U-Net {preset}, S={size}, batch {batch}, bf16, AdamW",
            f"{batch / seconds:.1f} ex/s ({1000 * seconds:.1f} ms)", f"{100 * f / seconds / peak:.1f} %"]


def lm_row(gpu: bool, peak: float, repeats: int) -> list[str]:
    preset, batch, length = SIZES["lm"][0 if gpu else 1]
    model = GPT2(gpt2_config(preset, dtype="bfloat16"))
    tx = optax.adamw(1e-4)
    params = init_params(model, jax.random.key(0))
    state = {"params": params, "opt": tx.init(params)}
    step = lm_train_step(model, tx)
    ids = jax.random.randint(jax.random.key(2), (batch, min(length, model.config.n_positions) + 1), 0,
                             model.config.vocab_size)
    f = flops(step, state["params"], state["opt"], ids)
    seconds = timed_step(step, state, ids, repeats)
    tokens = batch * (ids.shape[1] - 1)
    return [f"text encoder / LM train step, GPT-2 {preset}, {batch} x {ids.shape[1] - 1} tokens, bf16, AdamW",
            f"{tokens / seconds:.0f} tok/s ({1000 * seconds:.1f} ms)", f"{100 * f / seconds / peak:.1f} %"]


def sample_row(gpu: bool, repeats: int) -> list[str]:
    preset, size, batch, steps = SIZES["sample"][0 if gpu else 1]
    seconds = median_seconds(jax_sampler(unet_config(preset, dtype="bfloat16"), size, batch, steps), repeats)
    return [f"sampling, U-Net {preset}, S={size}, DDIM {steps} steps, guidance 3, batch {batch}, bf16",
            f"{batch / seconds:.2f} img/s", ""]


def pytest_row(name: str, args: list[str], env_extra: dict, timeout: int) -> list[str]:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", **env_extra}
    start = time.perf_counter()
    try:
        proc = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *args], cwd=ROOT,
                              env=env, capture_output=True, text=True, timeout=timeout)
        lines = proc.stdout.strip().splitlines()
        result = (lines[-1] if lines else proc.stderr.strip()[-200:]).strip("= ")
    except subprocess.TimeoutExpired:
        result = f"timed out after {timeout} s"
    return [name, f"{result} ({time.perf_counter() - start:.0f} s)", ""]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--pytest", action="store_true", help="run the test selections on CPU too")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--test-timeout", type=int, default=150, help="seconds per pytest selection")
    args = parser.parse_args()
    device = jax.devices()[0]
    gpu = device.platform == "gpu"
    print(f"device: {device.device_kind} ({device.platform}); jax {jax.__version__}")
    if not gpu:
        print("no GPU, skipped GPU rows: running the same checks at tiny shapes as a CPU smoke test")
    peak = matmul_peak(SIZES["matmul"][0 if gpu else 1])
    rows = [["bf16 matmul peak (measured)", f"{peak / 1e12:.1f} TFLOP/s", "", peak_memory()]]
    for make in (lambda: unet_row(gpu, peak, args.repeats), lambda: lm_row(gpu, peak, args.repeats),
                 lambda: sample_row(gpu, max(1, args.repeats // 2))):
        rows.append(make() + [peak_memory()])
    if gpu or args.pytest:
        rows.append(pytest_row("tests with a bfloat16 case", BF16_TESTS, {}, args.test_timeout) + [""])
        rows.append(pytest_row("numerics tests, float32, highest matmul precision", NUMERICS_TESTS,
                               {"JAX_DEFAULT_MATMUL_PRECISION": "highest"}, args.test_timeout) + [""])
    else:
        rows.append(["pytest selections (bf16 cases, numerics)", "no GPU, skipped (use --pytest to run on CPU)",
                     "", ""])
    print("\n| check | result | MFU | peak memory (process) |\n| --- | --- | --- | --- |")
    for r in rows:
        print("| " + " | ".join(r) + " |")


if __name__ == "__main__":
    main()
