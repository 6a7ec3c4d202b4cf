"""The diffusion task end to end on the tiny config: train through the runtime, sample grids, generate."""

import json
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
    # The Python pipeline: PIL images, num_images per prompt, deterministic for a seed.
    from llmimg_jax.pipeline import TextToImagePipeline

    pipe = TextToImagePipeline.from_workdir(workdir)
    out = pipe(["a red circle", "a blue square"], steps=2, seed=5, num_images=2)
    assert len(out.images) == 4 and out.images[0].size == (32, 32) and out.expansions is None
    again = pipe(["a red circle", "a blue square"], steps=2, seed=5, num_images=2)
    assert all(np.array_equal(np.asarray(a), np.asarray(b)) for a, b in zip(out.images, again.images))
    capsys.readouterr()
    assert main(["generate", "--workdir", workdir, "a red circle", "--out", str(single), "--sampler", "euler"]) == 2
    assert "unknown sampler 'euler'" in capsys.readouterr().err
    for steps in ("0", "-3"):  # not read as "the default"
        assert main(["generate", "--workdir", workdir, "a red circle", "--out", str(single), "--steps", steps]) == 2
        assert f"steps={steps} must be between 1" in capsys.readouterr().err
    assert main(["generate", "--workdir", workdir, "a red circle", "--out", str(single), "--expand"]) == 2
    assert "--lm-workdir" in capsys.readouterr().err


def test_bad_sampler_settings_fail_before_training(tmp_path, monkeypatch, capsys):
    """A sampler setting that would only be used at the first sample grid is checked when the run is built."""
    monkeypatch.setenv("LLMIMG_DATA_DIR", str(tmp_path / "data"))
    for override, message in (("--config.diffusion.sampler=euler", "unknown sampler 'euler'"),
                              ("--config.diffusion.timestep_spacing=middle", "unknown timestep spacing 'middle'"),
                              ("--config.diffusion.sample_steps=5000", "steps=5000 must be between 1")):
        workdir = tmp_path / "run"
        assert main(["train", "--config", TINY, "--workdir", str(workdir), override]) == 2
        assert message in capsys.readouterr().err
        assert not (workdir / "checkpoints").exists() or not os.listdir(workdir / "checkpoints")


@pytest.mark.slow
def test_eval_writes_a_report(tmp_path, monkeypatch, capsys):
    """`llmimg eval` on a tiny diffusion run: alignment per kind (one image per instruction, and the probe's pick of
    two), Fréchet distances with a real-vs-real baseline, plots and report files (the probe is trained into a
    temporary cache)."""
    monkeypatch.setenv("LLMIMG_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    workdir = str(tmp_path / "run")
    assert main(["train", "--config", TINY, "--workdir", workdir, "--config.train.steps=2",
                 "--config.train.sample_every=0"]) == 0
    assert main(["eval", "--workdir", workdir, "--num", "10", "--steps", "2", "--best-of", "2"]) == 0
    report = json.load(open(os.path.join(workdir, "eval", "report.json")))
    assert list(report["alignment"]) == ["without expansion", "without expansion, best of 2"]
    for scores in report["alignment"].values():
        assert scores["num"] == 10 and sum(scores["per_kind_num"].values()) == 10
        assert 0.0 <= scores["accuracy"] <= 1.0
    assert "real vs real (baseline, same N)" in report["frechet"]
    for name in ("report.md", "accuracy_per_kind.png", "loss.png", "eval_samples.png"):
        assert os.path.isfile(os.path.join(workdir, "eval", name)), name
    assert "alignment without expansion" in capsys.readouterr().out



@pytest.mark.slow
def test_quickstart_tiny_runs_resumes_and_serves_generate(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LLMIMG_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    workdir = str(tmp_path / "qs")
    args = ["quickstart", "--workdir", workdir, "--tiny", "--num-eval", "10", "--generator-override",
            "diffusion.sample_steps=2", "--captioner"]
    assert main(args) == 0
    for name in ("samples.png", "samples.txt", "report.md", "report.json", "accuracy_per_kind.png",
                 "lm/tb", "generator/tb", "captioner/tb"):
        assert os.path.exists(os.path.join(workdir, name)), name
    captioner = json.load(open(os.path.join(workdir, "report.json")))["captioner"]
    assert captioner["num"] == 10 and 0.0 <= captioner["round_trip"] <= 1.0 and "edit_skipped" in captioner
    assert "## Captioner" in open(os.path.join(workdir, "report.md")).read()
    captions = open(os.path.join(workdir, "samples.txt")).read().splitlines()
    assert len(captions) == 8 and all("  ->  " in c for c in captions)
    capsys.readouterr()
    assert main(args) == 0  # re-running resumes: nothing is trained again
    assert capsys.readouterr().out.count("already trained to step") == 3
    out = tmp_path / "x.png"
    assert main(["generate", "--workdir", workdir, "a red circle", "--out", str(out), "--steps", "2"]) == 0
    assert np.asarray(Image.open(out)).shape == (32, 32, 3)
