"""The prompt-expander task end to end on a tiny config: train through the runtime, then expand."""

import json
import os

import ml_collections
import pytest

from llmimg_jax.cli.main import main
from llmimg_jax.data.tokenizer import train_tokenizer
from llmimg_jax.text.expander import Expander, shapes_check
from llmimg_jax.text.gpt2 import GPT2, gpt2_config, init_params
from llmimg_jax.text.prompt_format import training_example

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GOOD = "a small red circle at the top left, on a white background"


def test_shapes_check_validates_grammar_and_instruction():
    assert shapes_check("a red circle", GOOD)
    assert not shapes_check("a blue circle", GOOD)                     # wrong colour
    assert not shapes_check("two red circles", GOOD)                   # wrong count
    assert not shapes_check("a red circle", "a red circle somewhere")  # not a description
    assert shapes_check("draw me something nice", GOOD)                # free text names no attribute: passes


def test_free_text_is_checked_for_the_attribute_words_it_names():
    assert shapes_check("I'd like a small red circle, against a white backdrop", GOOD)
    assert shapes_check("put some red circles up there", GOOD)         # number and place words are not checked
    assert not shapes_check("Please paint a blue thing", GOOD)           # a colour the scene lacks
    assert not shapes_check("Show me triangles", GOOD)                   # a shape (plural) the scene lacks
    assert not shapes_check("a large red circle, please", GOOD)          # a size
    assert not shapes_check("a red circle over a black canvas", GOOD)    # the background
    assert not shapes_check("Please paint a red circle", "a red circle somewhere")  # still a description first
    two = "a small red circle at the top left and a large red circle at the right, on a white background"
    assert shapes_check("Put two red circles anywhere", two) and shapes_check("A picture with 2 circles", two)
    assert shapes_check("a circle left of a large object", two)        # each `a ...` introduces one object
    assert not shapes_check("Just a red circle, please", two)           # the count: one object introduced
    assert not shapes_check("I want 3 red circles", two)


class ScriptedExpander(Expander):
    """The retry and fall-back logic with the model's samples replaced by a script (one text per call)."""

    def __init__(self, outputs: list[str], retries: int):
        super().__init__(None, None, None, ml_collections.ConfigDict(dict(retries=retries)), validate=True)
        self.outputs = iter(outputs)

    def _sample(self, prompts, key, greedy):
        return [next(self.outputs) for _ in prompts]


def test_free_text_keeps_its_first_valid_description_when_none_names_every_word():
    blue = GOOD.replace("red", "blue")
    # A retry that names every word wins.
    assert ScriptedExpander(["nonsense", GOOD, blue], retries=3).expand(["Please paint a blue thing"]) == [blue]
    # None does: the first valid description is kept (not the free text), with a warning; no fall-back counted.
    expander = ScriptedExpander(["nonsense", GOOD, "nonsense", GOOD.replace("red", "green")], retries=3)
    with pytest.warns(UserWarning, match="1 of 1 instructions are free text that no expansion named in full"):
        assert expander.expand(["Please paint a blue thing"]) == [GOOD]
    assert expander.fallbacks == 0
    # A spec instruction is still passed on unchanged when no expansion satisfies it.
    expander = ScriptedExpander([GOOD, GOOD], retries=1)
    with pytest.warns(UserWarning, match="passed on unchanged"):
        assert expander.expand(["a blue circle"]) == ["a blue circle"]
    assert expander.fallbacks == 1


def test_shapes_check_wants_the_edited_scene_for_an_edit_prompt():
    two = "a small red circle at the top left and a large blue square at the right, on a white background"
    assert shapes_check(f"{two}; make the circle green",
                        "a small green circle at the top left and a large blue square at the right, on a white "
                        "background")
    assert not shapes_check(f"{two}; make the circle green", two)       # the edit not applied
    assert not shapes_check(f"{two}; make the circle green",             # applied to the wrong object
                            "a small red circle at the top left and a large green square at the right, on a white "
                            "background")
    # No triangle: not an edit but free text, which names a triangle and green that the scene lacks.
    assert not shapes_check(f"{two}; make the triangle green", two)


def test_training_example_masks_only_the_target(tmp_path):
    tok = train_tokenizer([GOOD, "a red circle"] * 20, 300, str(tmp_path / "tok"))
    row = training_example(tok, "a red circle", GOOD, 40)
    n_prompt = len(tok.encode("a red circle", add_special_tokens=False)) + 1  # + <|sep|>
    n_target = len(tok.encode(GOOD, add_special_tokens=False)) + 1          # + end token
    assert row["loss_mask"].tolist() == [0] * n_prompt + [1] * n_target + [0] * (40 - n_prompt - n_target)
    assert row["attention_mask"].sum() == n_prompt + n_target
    assert tok.decode(row["ids"][n_prompt:n_prompt + n_target - 1]) == GOOD


def test_expander_falls_back_to_the_instruction_when_invalid(tmp_path):
    tok = train_tokenizer([GOOD, "a red circle"] * 20, 300, str(tmp_path / "tok"))
    import jax

    model = GPT2(gpt2_config("tiny", vocab_size=len(tok), n_positions=64))
    params = init_params(model, jax.random.key(0))  # untrained: its output is no valid description
    cfg = ml_collections.ConfigDict(dict(max_new_tokens=16, retries=2, temperature=1.0, top_k=0, top_p=1.0))
    expander = Expander(model, params, tok, cfg, validate=True)
    with pytest.warns(UserWarning, match="1 of 1 instructions had no valid expansion after 2 retries"):
        assert expander.expand(["a red circle"]) == ["a red circle"]
    assert expander.fallbacks == 1


@pytest.mark.slow
def test_tiny_lm_trains_and_expands(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("LLMIMG_DATA_DIR", str(tmp_path / "data"))
    workdir = str(tmp_path / "lm")
    config = os.path.join(REPO, "configs", "shapes_lm.py") + ":tiny"
    assert main(["train", "--config", config, "--workdir", workdir, "--config.train.steps=30",
                 "--config.lm.edit_fraction=0.3", "--config.lm.max_length=96", "--config.train.eval_every=30"]) == 0
    losses = [json.loads(line)["loss"] for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert losses[-1] < 0.8 * losses[0]
    # Trained on edits too: the evaluation scores one edit of each validation scene as well.
    scores = json.load(open(os.path.join(workdir, "eval", "expansion_000030.json")))
    assert scores["num"] == 10 and 0 < scores["edits"]["num"] <= 10
    assert set(scores["edits"]["per_form"]) <= {"colour", "size", "shape", "move", "remove", "add"}
    capsys.readouterr()
    assert main(["expand", "--workdir", workdir, "--eval", "4"]) == 0
    assert "| edit | applied exactly |" in capsys.readouterr().out
    prompts = tmp_path / "prompts.txt"
    prompts.write_text("two red circles in a row\na green triangle\n")
    out = tmp_path / "out.txt"
    assert main(["expand", "--workdir", workdir, "--prompts-file", str(prompts), "--out", str(out)]) == 0
    lines = out.read_text().splitlines()
    assert len(lines) == 2 and all(lines)
    capsys.readouterr()
    assert main(["expand", "--workdir", str(tmp_path / "missing"), "a red circle"]) == 2
    assert "not a llmimg workdir" in capsys.readouterr().err
