"""python -m llmimg_jax.bench [--quick | --tiny] [--out benchmarks/RESULTS.md]

Runs every row family, prints one markdown table and writes the results file (see report.py). The full run is
sized for under 10 minutes on 2 idle CPU cores; --quick is a short run; --tiny only checks that everything runs.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import traceback
import warnings

from llmimg_jax.bench import (diffusion_vs_diffusers, gan, lm_vs_transformers, report, sampling_vs_diffusers,
                              scaling, where_time_goes)
from llmimg_jax.bench.diffusion_vs_diffusers import Setup
from llmimg_jax.bench.rows import Row
from llmimg_jax.generator.diffusion.unet import unet_config

# Sizes of each mode. Full: the settings (S = 32 with the `small` U-Net, a small 4-level U-Net at
# S = 64, 50 DDIM steps with batch 16).
MODES = {
    "full": dict(train=[Setup(32, "small", 16), Setup(64, "small", 8, (("channel_mults", (1, 2, 2, 2)),))],
                 train_repeats=3, sample=("small", 32, 16, 50), sample_repeats=2, gan_batch=16, repeats=5,
                 lm=("tiny", 4, 16, 64), devices=(1, 2, 4, 8), mlp=(512, 2048, 64, 10),
                 growth=("small", (4, 8, 16), (16, 32, 64), 32, 4), op_batch=16),
    "quick": dict(train=[Setup(32, "small", 8)], train_repeats=2, sample=("small", 32, 4, 10), sample_repeats=1,
                  gan_batch=16, repeats=3, lm=("tiny", 4, 16, 32), devices=(1, 8), mlp=(256, 1024, 32, 3),
                  growth=("tiny", (4, 8), (16, 32), 16, 4), op_batch=4),
    "tiny": dict(train=[Setup(16, "tiny", 2)], train_repeats=1, sample=("tiny", 16, 2, 2), sample_repeats=1,
                 gan_batch=2, repeats=1, lm=("tiny", 2, 4, 4), devices=(1, 2), mlp=(32, 64, 8, 1),
                 growth=("tiny", (2,), (16,), 16, 2), op_batch=2),
}
PEER_GROUPS = (diffusion_vs_diffusers.GROUP, sampling_vs_diffusers.GROUP, lm_vs_transformers.GROUP)


def run_all(mode: str) -> tuple[list[Row], list[str]]:
    m = MODES[mode]
    preset, size, batch, steps = m["sample"]
    g = m["growth"]
    families = [
        ("diffusion train step", lambda: diffusion_vs_diffusers.run(m["train"], m["train_repeats"])),
        ("sampling", lambda: sampling_vs_diffusers.run(unet_config(preset), preset, size, batch, steps,
                                                       m["sample_repeats"])),
        ("GAN generation", lambda: gan.run(m["gan_batch"], m["repeats"])),
        ("LM sampling", lambda: lm_vs_transformers.run(*m["lm"], repeats=m["repeats"])),
        ("simulated devices", lambda: scaling.device_rows(m["devices"], *m["mlp"])),
        ("U-Net growth", lambda: scaling.growth_rows(g[0], g[1], g[2], size=g[3], batch=g[4],
                                                     repeats=m["train_repeats"])),
    ]
    rows, start = [], time.perf_counter()
    for name, family in families:
        try:
            rows += family()
        except Exception as e:  # noqa: BLE001 -- reported as a row, with its traceback, and in the exit status
            traceback.print_exc()
            rows.append(Row(name, "FAILED", f"{type(e).__name__}: {str(e).splitlines()[0][:120]}"))
        print(f"[bench] {name} done at {time.perf_counter() - start:.0f} s", file=sys.stderr, flush=True)
    skipped = [r for r in rows if r.peer.startswith("skipped")]
    if skipped:
        warnings.warn(f"skipped {len(skipped)} peer comparison(s): {skipped[0].peer}")
    return rows, where_notes(rows, m["op_batch"], m["repeats"])


def where_notes(rows: list[Row], op_batch: int, repeats: int) -> list[str]:
    """When a peer comparison is below 1, time the U-Net's main ops alone and say which are slower."""
    slow = [r for r in rows if r.group in PEER_GROUPS and r.ratio is not None and r.ratio < 1]
    if not slow:
        return []
    notes = [f"{r.group}, {r.setting.split(';')[0]}: {r.ratio:.2f}x the peer ({r.ours} vs {r.peer})." for r in slow]
    ops = where_time_goes.run(op_batch, repeats)
    rows.extend(ops)
    behind = [r for r in ops if r.ratio < 1]
    notes.append("Per op, forward+backward alone (rows 'where the time goes'): " + "; ".join(
        f"{r.setting.rsplit(',', 1)[0]} {1 / r.ratio:.1f}x slower than torch" if r.ratio < 1 else
        f"{r.setting.rsplit(',', 1)[0]} {r.ratio:.1f}x faster" for r in ops) + ".")
    if behind:
        notes.append("The U-Net step is mostly these ops, so the slower ones (XLA's CPU kernels for them, not "
                     "the Python around them: our loops are single compiled programs) account for the gap.")
    return notes


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    size = parser.add_mutually_exclusive_group()
    size.add_argument("--quick", action="store_true", help="a short run (smaller batches, fewer steps)")
    size.add_argument("--tiny", action="store_true", help="tiny models: checks that every row runs (tests)")
    parser.add_argument("--out", default=os.path.join("benchmarks", "RESULTS.md"), help="results file to write")
    args = parser.parse_args()
    mode = "tiny" if args.tiny else "quick" if args.quick else "full"
    load_before = os.getloadavg()[0] if hasattr(os, "getloadavg") else None
    start = time.perf_counter()
    rows, notes = run_all(mode)
    print(report.table(rows))
    print("\n" + report.LEGEND)
    for note in notes:
        print(f"- {note}")
    report.write_results(args.out, rows, command=report.command_line(), mode=mode,
                         seconds=time.perf_counter() - start, load_before=load_before, notes=notes)
    print(f"\nwrote {args.out}")
    failed = [r.group for r in rows if r.setting == "FAILED"]
    if failed:
        raise SystemExit(f"{len(failed)} benchmark famil{'y' if len(failed) == 1 else 'ies'} failed: "
                         f"{', '.join(failed)} (tracebacks above)")


if __name__ == "__main__":
    main()
