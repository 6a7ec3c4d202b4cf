"""Renders the benchmark rows as one markdown table and writes RESULTS.md with the command, date, machine and
versions. A `## GPU check` section already in RESULTS.md (figures from scripts/gpu_check.py) is kept."""

from __future__ import annotations

import datetime
import importlib.metadata
import os
import platform
import sys

from llmimg_jax.bench.rows import Row, cpu_threads

PACKAGES = ("jax", "jaxlib", "flax", "optax", "torch", "diffusers", "transformers")
GPU_SECTION = "## GPU check"


def table(rows: list[Row]) -> str:
    lines = ["| group | setting | llmimg_jax | peer | ratio |", "| --- | --- | --- | --- | --- |"]
    for r in rows:
        ratio = "" if r.ratio is None else f"{r.ratio:.2f}"
        lines.append(f"| {r.group} | {r.setting} | {r.ours} | {r.peer} | {ratio} |")
    return "\n".join(lines)


LEGEND = ("ratio: for peer rows, our throughput / the peer's (> 1: we are faster); for the per-op rows, the "
          "peer's time / ours; for scaling rows, step time (data parallel) or state bytes per device (fsdp) "
          "relative to the group's first row, and step time relative to the smallest batch or resolution.")


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine() -> dict:
    return {"cpu": cpu_model(), "cores_usable": cpu_threads(), "cores_online": os.cpu_count(),
            "platform": platform.platform(), "python": platform.python_version(),
            "load": os.getloadavg()[0] if hasattr(os, "getloadavg") else None}


def versions() -> dict[str, str]:
    out = {}
    for name in PACKAGES:
        try:
            out[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            out[name] = "not installed"
    return out


def load_warning(load_before: float | None, load_after: float | None, cores: int) -> str:
    """A warning when other processes competed for the cores (torch's OpenMP threads suffer most)."""
    worst = max(x for x in (load_before, load_after, 0.0) if x is not None)
    if worst <= cores:
        return ""
    omp = os.environ.get("OMP_WAIT_POLICY")
    return (f"**Warning: the machine was shared** (1-minute load average {load_before:.1f} before, {load_after:.1f} "
            f"after, on {cores} usable cores). Timings are inflated and noisy. With the default OMP_WAIT_POLICY, "
            "torch's OpenMP threads spin at barriers waiting for descheduled siblings, so the peer suffers far more "
            "than XLA's thread pool and the ratios overstate our speed"
            + (f" (this run set OMP_WAIT_POLICY={omp} to limit that)" if omp else "")
            + ". Rerun on an idle machine before quoting them.")


def _kept_gpu_section(path: str) -> str:
    if not os.path.isfile(path):
        return ""
    with open(path) as f:
        text = f.read()
    start = text.find(GPU_SECTION)
    return text[start:].strip() if start >= 0 else ""


def write_results(path: str, rows: list[Row], *, command: str, mode: str, seconds: float, load_before: float | None,
                  notes: list[str]) -> str:
    """Writes the results file and returns its text."""
    info, vers = machine(), versions()
    warning = load_warning(load_before, info["load"], info["cores_usable"])
    gpu = _kept_gpu_section(path) or (f"{GPU_SECTION}\n\nNot measured yet: run `python scripts/gpu_check.py` on a "
                                      "GPU machine and paste its table here.")
    parts = [
        "# Benchmark results", "",
        f"- Command: `{command}` ({mode} run, {seconds:.0f} s wall time)",
        f"- Date: {datetime.datetime.now(datetime.timezone.utc).strftime('%Y-%m-%d %H:%M UTC')}",
        f"- Machine: {info['cpu']}, {info['cores_usable']} usable of {info['cores_online']} online CPU cores, "
        f"{info['platform']}, Python {info['python']}",
        "- Versions: " + ", ".join(f"{k} {v}" for k, v in vers.items()),
        f"- Threads: XLA's CPU pool and `torch.set_num_threads({info['cores_usable']})`; timings are medians of "
        "alternating runs (ours, peer, ours, ...) after one warm-up run each (compile time excluded)"
        + (f"; OMP_WAIT_POLICY={os.environ['OMP_WAIT_POLICY']}" if os.environ.get("OMP_WAIT_POLICY") else ""), "",
    ]
    if warning:
        parts += [warning, ""]
    parts += [table(rows), "", LEGEND, ""]
    if notes:
        parts += ["## Where the time goes", ""] + [f"- {n}" for n in notes] + [""]
    parts += [gpu, ""]
    text = "\n".join(parts)
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "w") as f:
        f.write(text)
    return text


def command_line() -> str:
    return "python -m llmimg_jax.bench " + " ".join(sys.argv[1:]) if sys.argv[1:] else "python -m llmimg_jax.bench"
