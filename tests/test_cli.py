"""The command line end to end: data commands, and one-line errors with exit status 2 for bad input."""

import json
import os
import subprocess
import sys

import numpy as np
import pytest
from PIL import Image

from llmimg_jax.cli.main import main
from llmimg_jax.data.shapes.grammar import parse_description
from llmimg_jax.data.shapes.scene import Scene

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "shapes_diffusion.py") + ":tiny"


@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("LLMIMG_DATA_DIR", str(tmp_path / "data"))
    return tmp_path / "data"


def test_data_build_and_export(data_dir, tmp_path, capsys):
    assert main(["data", "build", "--config", TINY]) == 0
    assert "shapes train: 256 examples" in capsys.readouterr().out
    out = tmp_path / "export"
    assert main(["data", "export", "--config", TINY, "--split", "validation", "--num", "6", "--size", "32",
                 "--out", str(out)]) == 0
    descriptions = (out / "descriptions.txt").read_text().splitlines()
    examples = [json.loads(line) for line in (out / "examples.jsonl").read_text().splitlines()]
    assert len(descriptions) == len(examples) == 6
    for i, (text, example) in enumerate(zip(descriptions, examples)):
        image = np.asarray(Image.open(out / f"{i:05d}.png"))
        assert image.shape == (32, 32, 3) and image.dtype == np.uint8
        assert example["description"] == text
        assert parse_description(text) == Scene.from_json({"objects": example["objects"],
                                                           "background": example["background"]})


def _run(*args, **env):
    """The installed command line in a subprocess: (exit status, stderr)."""
    proc = subprocess.run([sys.executable, "-m", "llmimg_jax.cli.main", *args], capture_output=True, text=True,
                          env={**os.environ, **env}, timeout=300)
    return proc.returncode, proc.stderr


@pytest.mark.parametrize("args, message", [
    (["generate", "--workdir", "/nonexistent/run", "a red circle", "--out", "x.png"], "does not exist"),
    (["expand", "--workdir", "/nonexistent/run", "a red circle"], "not a llmimg workdir"),
    (["train", "--config", "configs/missing.py", "--workdir", "w"], "not found"),
    (["train", "--config", TINY, "--workdir", "w", "--config.train.steps=many"], "'train.steps' expects an integer"),
    (["data", "export", "--config", TINY, "--num", "0", "--out", "d"], "--num must be positive"),
])
def test_bad_input_is_one_line_exit_2(args, message, tmp_path):
    code, err = _run(*args)
    assert code == 2, err
    assert message in err and err.count("\n") == 1 and "Traceback" not in err


def test_bad_prompts_files(tmp_path):
    workdir = tmp_path / "run"
    workdir.mkdir()
    (workdir / "config.json").write_text("{}")
    binary = tmp_path / "binary.txt"
    binary.write_bytes(b"\xff\xfe not utf-8\n")
    empty_line = tmp_path / "empty_line.txt"
    empty_line.write_text("a red circle\n\na blue square\n")
    for path, message in ((binary, "is not UTF-8"), (empty_line, "empty prompt on line 2"),
                          (tmp_path / "absent.txt", "not found")):
        code, err = _run("generate", "--workdir", str(workdir), "--prompts-file", str(path), "--out", str(tmp_path))
        assert code == 2 and message in err, err
    code, err = _run("generate", "--workdir", str(workdir), "  ", "--out", "x.png")
    assert code == 2 and "prompt is empty" in err


def test_debug_shows_the_traceback():
    code, err = _run("--debug", "expand", "--workdir", "/nonexistent/run", "a red circle")
    assert code != 0 and "Traceback" in err
