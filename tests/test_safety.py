"""The prompt blocklist: whole-word matching, list files, refusal before and after expansion (pipeline and CLI)."""

import os
import subprocess
import sys

import numpy as np
import pytest

from llmimg_jax.cli.main import main
from llmimg_jax.config import base_config
from llmimg_jax.data.shapes.grammar import describe
from llmimg_jax.errors import UserError
from llmimg_jax.evaluation.alignment import make_eval_examples
from llmimg_jax.generator.load import LoadedGenerator
from llmimg_jax.pipeline import TextToImagePipeline
from llmimg_jax.safety import DEFAULT_BLOCKLIST, NO_BLOCKLIST, Blocklist, load_blocklist, read_terms


def test_whole_word_case_insensitive_matching():
    blocklist = Blocklist(("gore", "blood bath"))
    assert blocklist.find("a scene of GORE, on a white background") == "gore"
    assert blocklist.find("gore") == "gore" and blocklist.find("(Gore)") == "gore"
    assert blocklist.find("a gorgeous red circle") is None  # inside a word: not a match
    assert blocklist.find("gored") is None and blocklist.find("a_gore") is None
    assert blocklist.find("a Blood\n  Bath at the top") == "blood bath"  # any whitespace between the words
    assert blocklist.find("a bloodbath") is None and blocklist.find("a blood red bath") is None
    assert NO_BLOCKLIST.find("gore") is None


def test_list_files(tmp_path):
    path = tmp_path / "list.txt"
    path.write_text("# my terms\n\n  Purple  # a colour we do not draw\nDARK   Star\n#gore\n", encoding="utf-8")
    assert read_terms(str(path)) == ["purple", "dark star"]
    combined = load_blocklist(str(path))
    assert set(read_terms(DEFAULT_BLOCKLIST)) < set(combined.terms) and "purple" in combined.terms
    assert combined.source == f"default blocklist + blocklist {path}"
    alone = load_blocklist(str(path), default=False)
    assert alone.terms == ("purple", "dark star") and alone.find("a nude circle") is None
    with pytest.raises(UserError, match="not found"):
        read_terms(str(tmp_path / "absent.txt"))
    (tmp_path / "binary.txt").write_bytes(b"\xff\xfe gore\n")
    with pytest.raises(UserError, match="not UTF-8"):
        read_terms(str(tmp_path / "binary.txt"))
    (tmp_path / "comments.txt").write_text("# nothing here\n\n")
    with pytest.raises(UserError, match="has no terms"):
        read_terms(str(tmp_path / "comments.txt"))


def test_default_list_blocks_unsafe_words_but_no_shapes_instruction():
    blocklist = load_blocklist()
    assert blocklist.find("a NUDE figure") == "nude"
    examples = make_eval_examples(300, seed=0)
    texts = [text for _, text, _ in examples] + [describe(scene) for _, _, scene in examples]
    assert [t for t in texts if blocklist.find(t)] == []


class StubExpander:
    def __init__(self, rewrite):
        self.rewrite, self.calls = rewrite, 0

    def expand(self, prompts, seed=0):
        self.calls += 1
        return [self.rewrite(p) for p in prompts]


def stub_pipeline(rewrite=lambda p: p + ", on a black background", blocklist=None):
    """A pipeline around a stand-in generator (grey images) and expander; counts the generator's calls."""
    calls = []

    def generate(prompts, *, seed=0, **options):
        calls.append(list(prompts))
        return np.full((len(prompts), 32, 32, 3), 128, np.uint8)

    pipe = TextToImagePipeline(LoadedGenerator("diffusion", base_config(), "stub", 0, generate), "lm",
                               blocklist=blocklist)
    pipe._expander = StubExpander(rewrite)
    return pipe, calls


def test_pipeline_refuses_before_and_after_expansion():
    pipe, calls = stub_pipeline()
    assert len(pipe(["a red circle"], expand=True).images) == 1 and pipe.expander.calls == 1
    with pytest.raises(UserError, match=r"^prompt 2 contains the blocked term 'nude' \(default blocklist\)"):
        pipe(["a red circle", "a Nude red circle"], expand=True)
    assert pipe.expander.calls == 1 and len(calls) == 1  # refused before the LM and the generator ran
    with pytest.raises(UserError, match="the prompt contains the blocked term 'gore'"):
        pipe("gore")  # without expansion too

    pipe, calls = stub_pipeline(rewrite=lambda p: p.replace("red", "gory red"))
    with pytest.raises(UserError, match=r"^the expansion of the prompt contains the blocked term 'gory'.*"
                                        r"without --expand \(expansion: 'a large gory red circle'\)"):
        pipe(["a large red circle"], expand=True)
    assert pipe.expander.calls == 1 and calls == []  # expanded, then refused before drawing
    assert pipe(["a large red circle"]).prompts == ["a large red circle"]  # unexpanded, it is fine
    with pytest.raises(UserError, match="blocked term 'gory'"):
        pipe.expand(["a large red circle"])

    pipe, _ = stub_pipeline(blocklist=NO_BLOCKLIST)
    assert len(pipe("gore").images) == 1


def _run(*args):
    proc = subprocess.run([sys.executable, "-m", "llmimg_jax.cli.main", *args], capture_output=True, text=True,
                          timeout=300)
    return proc.returncode, proc.stderr


def test_cli_refuses_a_blocked_prompt_before_loading_anything(tmp_path):
    # The workdir does not exist: the blocklist is checked first, before any model is looked for.
    code, err = _run("generate", "--workdir", str(tmp_path / "none"), "a nude red circle", "--out", "x.png")
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err, err
    assert "blocked term 'nude' (default blocklist); remove it from the prompt" in err
    terms = tmp_path / "terms.txt"
    terms.write_text("purple\n")
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("a red circle\na PURPLE square\n")
    code, err = _run("generate", "--workdir", str(tmp_path / "none"), "--prompts-file", str(prompts),
                     "--out", str(tmp_path / "out"), "--blocklist", str(terms))
    assert code == 2 and err.count("\n") == 1, err
    assert f"prompt 2 contains the blocked term 'purple' (default blocklist + blocklist {terms})" in err
    code, err = _run("generate", "--workdir", str(tmp_path / "none"), "a red circle", "--out", "x.png",
                     "--blocklist", str(tmp_path / "absent.txt"))
    assert code == 2 and "blocklist file" in err and "not found" in err and err.count("\n") == 1, err


def test_cli_refuses_a_blocked_expansion(tmp_path, monkeypatch, capsys):
    made = []

    def from_workdir(workdir, *, lm_workdir=None, blocklist=None, **kw):
        pipe, calls = stub_pipeline(rewrite=lambda p: p + " with gore", blocklist=blocklist)
        made.append(calls)
        return pipe

    monkeypatch.setattr(TextToImagePipeline, "from_workdir", staticmethod(from_workdir))
    out = str(tmp_path / "x.png")
    assert main(["generate", "--workdir", "w", "a red circle", "--out", out, "--expand"]) == 2
    err = capsys.readouterr().err
    assert "the expansion of the prompt contains the blocked term 'gore'" in err and err.count("\n") == 1
    assert made == [[]] and not os.path.exists(out)
    assert main(["generate", "--workdir", "w", "a red circle", "--out", out]) == 0  # without --expand: drawn
    assert os.path.isfile(out)
