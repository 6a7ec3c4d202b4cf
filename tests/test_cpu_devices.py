"""The `llmimg` program's CPU split: one JAX device per core, a count the user set left alone."""

import json
import os
import subprocess
import sys

import pytest

from llmimg_jax.training.cpu_devices import cpu_device_count

PROBE = ("import json, jax; from llmimg_jax.training.cpu_devices import set_cpu_devices; "
         "n = set_cpu_devices(); print(json.dumps([n, jax.device_count()]))")


def _probe(**env_changes) -> list:
    env = {k: v for k, v in os.environ.items() if k not in ("XLA_FLAGS", "JAX_NUM_CPU_DEVICES", "LLMIMG_CPU_DEVICES")}
    env.update(JAX_PLATFORMS="cpu", **env_changes)
    proc = subprocess.run([sys.executable, "-c", PROBE], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return json.loads(proc.stdout.strip().splitlines()[-1])


@pytest.mark.parametrize("cores, devices", [(1, 1), (2, 2), (3, 2), (4, 4), (6, 4), (8, 8), (64, 8), (0, 1)])
def test_device_count_is_a_power_of_two_up_to_the_cores(cores, devices):
    assert cpu_device_count(cores) == devices


def test_count_from_the_environment_and_user_counts_left_alone():
    assert _probe(LLMIMG_CPU_DEVICES="3") == [3, 3]
    assert _probe(XLA_FLAGS="--xla_force_host_platform_device_count=5", LLMIMG_CPU_DEVICES="3") == [None, 5]
    assert _probe(JAX_NUM_CPU_DEVICES="6") == [None, 6]
    n, count = _probe()
    assert n == count == cpu_device_count(len(os.sched_getaffinity(0)))


def test_a_bad_count_is_a_one_line_error():
    env = {**os.environ, "LLMIMG_CPU_DEVICES": "two"}
    env.pop("XLA_FLAGS", None)
    proc = subprocess.run([sys.executable, "-m", "llmimg_jax.cli.main", "data", "--help"], capture_output=True,
                          text=True, env=env, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == [
        "llmimg: error: LLMIMG_CPU_DEVICES='two' is not a positive whole number; set it to the CPU device count "
        "(1: one device for all cores) or unset it"]
