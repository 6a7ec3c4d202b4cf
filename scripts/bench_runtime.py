"""Runtime scaling on simulated CPU devices (a thin wrapper of llmimg_jax/bench/scaling.py); prints a table.

  python scripts/bench_runtime.py [--steps 10] [--embed 512] [--mlp 2048] [--batch 64]

Step time and per-device train-state bytes of an MLP task on 1, 2, 4, 8 devices (data parallel) and with
fsdp = 1, 2, 4, 8 on 8 devices. The full benchmark (`python -m llmimg_jax.bench`) includes these rows."""

from __future__ import annotations

import argparse

from llmimg_jax.bench import report, scaling


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--embed", type=int, default=512)
    parser.add_argument("--mlp", type=int, default=2048)
    parser.add_argument("--batch", type=int, default=64)
    args = parser.parse_args()
    print(report.table(scaling.device_rows((1, 2, 4, 8), args.embed, args.mlp, args.batch, args.steps)))


if __name__ == "__main__":
    main()
