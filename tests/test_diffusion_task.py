"""The diffusion task end to end on the tiny config: train through the runtime, sample grids, generate."""

import os

import numpy as np
import pytest
from PIL import Image

from llmimg_jax.cli.main import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "shapes_diffusion.py") + ":tiny"


@pytest.mark.slow
def test_tiny_diffusion_trains_and_generates(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LLMIMG_DATA_DIR", str(tmp_path / "data"))
    workdir = str(tmp_path / "run")
    assert main(["train", "--config", TINY, "--workdir", workdir]) == 0
    assert os.path.isfile(os.path.join(workdir, "samples", "step_000010.png"))
    captions = open(os.path.join(workdir, "samples", "step_000010.txt")).read().splitlines()
    assert len(captions) == 4 and all(c.startswith("a ") for c in captions)

    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a large red circle in the center, on a black background\n"
                       "a small blue square at the top left, on a white background\n"
                       "a large green triangle at the bottom, on a white background\n")
    out = tmp_path / "images"
    assert main(["generate", "--workdir", workdir, "--prompts-file", str(prompts), "--out", str(out),
                 "--steps", "3", "--seed", "7"]) == 0
    first = [np.asarray(Image.open(out / f"{i:05d}.png")) for i in range(3)]
    assert all(im.shape == (32, 32, 3) for im in first)
    # Same seed, same images; another seed, other images.
    again = tmp_path / "again"
    assert main(["generate", "--workdir", workdir, "--prompts-file", str(prompts), "--out", str(again),
                 "--steps", "3", "--seed", "7"]) == 0
    assert all(np.array_equal(a, np.asarray(Image.open(again / f"{i:05d}.png"))) for i, a in enumerate(first))
    single = tmp_path / "one.png"
    assert main(["generate", "--workdir", workdir, "a red circle", "--out", str(single), "--steps", "3",
                 "--seed", "8", "--sampler", "dpm++2m"]) == 0
    assert np.asarray(Image.open(single)).shape == (32, 32, 3)
    capsys.readouterr()
    assert main(["generate", "--workdir", workdir, "a red circle", "--out", str(single), "--sampler", "euler"]) == 2
    assert "unknown sampler 'euler'" in capsys.readouterr().err
    assert main(["generate", "--workdir", workdir, "a red circle", "--out", str(single), "--expand"]) == 2
    assert "--lm-workdir" in capsys.readouterr().err
