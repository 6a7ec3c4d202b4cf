"""The captioner (image encoder + prefix GPT-2): scoring, edit triples, training through the runtime, describe."""

import argparse
import json
import os

import numpy as np
import pytest
from PIL import Image

from llmimg_jax.cli import main as cli_main
from llmimg_jax.data.shapes.edits import apply_edit
from llmimg_jax.data.shapes.grammar import describe, parse_description
from llmimg_jax.data.shapes.scene import Scene, ShapeObject
from llmimg_jax.data.tokenizer import train_tokenizer
from llmimg_jax.evaluation.captioning import score_descriptions
from llmimg_jax.text.edit_format import EDIT_SEPARATOR, edit_triple, with_edits
from llmimg_jax.training import task as task_lib
from tests.helpers import run_with_devices

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, "configs", "shapes_captioner.py") + ":tiny"
SCENE = Scene((ShapeObject("circle", "red", "large", 0, 0), ShapeObject("square", "blue", "small", 1, 1)), "black")


@pytest.fixture
def registered(monkeypatch):
    """The task and commands, registered as llmimg_jax/cli/main.py and training/task.py will register them
    (a no-op once they do)."""
    monkeypatch.setitem(task_lib.TASKS, "captioner", "llmimg_jax.text.captioner_task:make_task")
    original = cli_main.build_parser

    def build_parser():
        from llmimg_jax.cli import describe_cmd, vary_cmd

        parser = original()
        sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
        for name, module in (("describe", describe_cmd), ("vary", vary_cmd)):
            if name not in sub.choices:
                module.register(sub)
        return parser

    monkeypatch.setattr(cli_main, "build_parser", build_parser)


def test_score_descriptions_per_attribute():
    truth = [SCENE, SCENE, SCENE]
    wrong_colour = describe(Scene((SCENE.objects[0], ShapeObject("square", "green", "small", 1, 1)), "black"))
    result = score_descriptions([describe(SCENE), wrong_colour, "a red circle somewhere"], truth)
    assert result["exact"] == pytest.approx(1 / 3) and result["valid"] == pytest.approx(2 / 3)
    assert result["correct"] == [True, False, False]
    # 6 true objects: all right in row 0, one colour wrong in row 1, everything wrong in row 2 (unparsable).
    assert result["per_attribute"]["colour"] == pytest.approx(3 / 6)
    assert result["per_attribute"]["shape"] == pytest.approx(4 / 6)
    assert result["per_attribute"]["count"] == pytest.approx(2 / 3)
    assert result["per_attribute"]["background"] == pytest.approx(2 / 3)


def test_edit_triples_match_apply_edit(tmp_path):
    example = {"objects": [o.to_json() for o in SCENE.objects], "background": SCENE.background,
               "text": describe(SCENE)}
    for seed in range(20):
        prompt, target = edit_triple(example, np.random.default_rng(seed))
        description, edit = prompt.split(EDIT_SEPARATOR)
        assert parse_description(description) == SCENE
        assert parse_description(target) == apply_edit(SCENE, edit)
    tok = train_tokenizer([describe(SCENE), "make the red circle blue"] * 20, 300, str(tmp_path / "tok"))
    base = lambda ex, rng: {"marker": np.zeros(1)}  # noqa: E731
    assert with_edits(base, tok, 96, 0.0) is base
    rows = [with_edits(base, tok, 96, 0.5)(example, np.random.default_rng(i)) for i in range(200)]
    edited = sum("ids" in r for r in rows)
    assert 70 < edited < 130  # about half
    # An example without a Shapes scene (free caption) keeps the plain layout even at fraction 1.
    assert "marker" in with_edits(base, tok, 96, 1.0)({"text": "free caption"}, np.random.default_rng(0))


@pytest.mark.slow
def test_tiny_captioner_trains_and_describes(tmp_path, monkeypatch, capsys, registered):
    monkeypatch.setenv("LLMIMG_DATA_DIR", str(tmp_path / "data"))
    workdir = str(tmp_path / "cap")
    assert cli_main.main(["train", "--config", TINY, "--workdir", workdir, "--config.train.steps=30"]) == 0
    losses = [json.loads(line)["loss"] for line in open(os.path.join(workdir, "metrics.jsonl"))]
    assert losses[-1] < 0.8 * losses[0]

    from llmimg_jax.data.shapes.tfds_builder import generate_example

    paths = []
    for i in range(3):
        paths.append(str(tmp_path / f"im{i}.png"))
        Image.fromarray(generate_example(32, 0, "validation", i)["image"]).save(paths[-1])
    capsys.readouterr()
    assert cli_main.main(["describe", "--workdir", workdir, *paths]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 3 and all(line.strip() for line in lines)
    out = tmp_path / "d.txt"
    assert cli_main.main(["describe", "--workdir", workdir, *paths[:2], "--out", str(out)]) == 0
    assert out.read_text().splitlines() == lines[:2]  # greedy: the same descriptions

    bad = tmp_path / "notes.png"
    bad.write_text("not an image")
    capsys.readouterr()
    assert cli_main.main(["describe", "--workdir", workdir, paths[0], str(bad)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "notes.png" in err and "not a readable image" in err
    assert cli_main.main(["describe", "--workdir", workdir, str(tmp_path / "missing.png")]) == 2
    assert "not found" in capsys.readouterr().err


def test_describe_needs_a_captioner_workdir(tmp_path, capsys, registered):
    image = tmp_path / "a.png"
    Image.fromarray(np.zeros((32, 32, 3), np.uint8)).save(image)
    assert cli_main.main(["describe", "--workdir", str(tmp_path / "nowhere"), str(image)]) == 2
    assert "not a llmimg workdir" in capsys.readouterr().err


@pytest.mark.slow
def test_sharded_loss_equals_unsharded(tmp_path):
    result = run_with_devices(f"""
        import json
        import jax, ml_collections, numpy as np
        from llmimg_jax.config import load_config
        from llmimg_jax.training import task as task_lib
        from llmimg_jax.training.mesh import make_mesh
        from llmimg_jax.training.state import init_state, state_spec

        task_lib.TASKS.setdefault("captioner", "llmimg_jax.text.captioner_task:make_task")
        config = load_config({TINY!r})
        config.data.data_dir = {str(tmp_path / "data")!r}
        config.mesh.update(dict(data=2, fsdp=2, tensor=2))
        task = task_lib.make_task(config, {str(tmp_path / "w")!r})
        mesh = make_mesh(config.mesh)
        spec = state_spec(task, config, mesh)
        state = init_state(task, config, spec)
        batch = next(task.batches(0, mesh))
        loss_fn = task.phases[0].loss_fn
        rng = jax.random.key(0)
        with jax.set_mesh(mesh):
            sharded = float(jax.jit(loss_fn)(state["params"], batch, rng, 0)[0])
        single = float(jax.jit(loss_fn)(jax.device_get(state["params"]), jax.device_get(batch), rng, 0)[0])
        conv = state["params"]["encoder"]["conv_1"]["kernel"]
        print(json.dumps({{"sharded": sharded, "single": single,
                          "conv_shard": list(conv.addressable_shards[0].data.shape), "conv": list(conv.shape),
                          "batch_shard": list(batch["image"].addressable_shards[0].data.shape)}}))
    """)
    assert result["conv_shard"] != result["conv"]           # the encoder really is split over the mesh
    assert result["batch_shard"][0] == 8 // 4                # and the batch over data x fsdp
    assert abs(result["sharded"] - result["single"]) < 1e-5


def oracle_edits(prompts: list[str], obey: bool) -> list[str]:
    """What a perfect edit expander writes for "description; edit" prompts (obey=False: the scene unedited)."""
    out = []
    for prompt in prompts:
        description, edit = prompt.split(EDIT_SEPARATOR)
        scene = parse_description(description)
        out.append(describe(apply_edit(scene, edit) if obey else scene))
    return out


def test_round_trip_and_edit_accuracy_with_oracles(tmp_path, monkeypatch):
    """An oracle captioner (the true scene) and an oracle generator (the renderer) score 1.0; a generator that
    ignores the edit scores 0 on edits."""
    from llmimg_jax.data.shapes.render import render
    from llmimg_jax.evaluation import captioning

    images, scenes = np.zeros((6, 32, 32, 3), np.uint8), [SCENE, Scene(SCENE.objects[:1], "white")] * 3
    monkeypatch.setattr(captioning, "validation_examples", lambda data_config, num: (images[:num], scenes[:num]))
    truth = iter([describe(s) for s in scenes] * 2)

    class Captioner:
        def describe(self, imgs):
            return [next(truth) for _ in imgs]

    class Pipeline:
        def __init__(self, obey):
            self.obey = obey

        def expand(self, prompts, seed=0):
            return oracle_edits(prompts, self.obey)

        def generate_arrays(self, texts, seed=0):
            rng = np.random.default_rng(seed)
            return np.stack([render(parse_description(t), 32, rng) for t in texts])

    assert captioning.round_trip_accuracy(Captioner(), Pipeline(True), None, num=6)["accuracy"] == 1.0
    assert captioning.edit_accuracy(Captioner(), Pipeline(True), None, num=6)["accuracy"] == 1.0
    truth = iter([describe(s) for s in scenes])
    assert captioning.edit_accuracy(Captioner(), Pipeline(False), None, num=6)["accuracy"] == 0.0


def test_edit_expansion_accuracy_with_oracle_expanders():
    """An expander that applies the edit scores 1.0 on every form drawn; one that ignores it scores 0."""
    from llmimg_jax.evaluation.expansion import edit_expansion_accuracy

    scenes = [SCENE, Scene(SCENE.objects[:1], "white"), Scene(SCENE.objects[:2], "black")] * 4

    class Expander:
        def __init__(self, obey):
            self.obey = obey

        def expand_with_status(self, prompts, seed=0):
            return oracle_edits(prompts, self.obey), [True] * len(prompts)

    right = edit_expansion_accuracy(Expander(True), scenes, batch_size=5)
    assert right["overall"] == 1.0 and right["num"] == 12 and right["skipped"] == 0 and not right["failures"]
    assert len(right["per_form"]) >= 3 and set(right["per_form"].values()) == {1.0}
    wrong = edit_expansion_accuracy(Expander(False), scenes, batch_size=5)
    assert wrong["overall"] == 0.0 and wrong["valid"] == 1.0 and len(wrong["failures"]) == 12


def test_image_encoder_gives_one_vector_per_region():
    import jax
    import jax.numpy as jnp

    from llmimg_jax.errors import UserError
    from llmimg_jax.text.captioner import ImageEncoder

    encoder = ImageEncoder(n_embd=16, num_prefix=4, channels=(8, 8), strides=(2, 2), hidden=32)
    image = np.full((1, 16, 16, 3), -1.0, np.float32)
    image[0, :8, :8] = [0.8, -0.8, -0.8]  # something red in the top-left quarter only
    params = encoder.init(jax.random.key(0), jnp.asarray(image))["params"]
    blank = encoder.apply({"params": params}, jnp.full_like(jnp.asarray(image), -1.0))
    prefix = encoder.apply({"params": params}, jnp.asarray(image))
    assert prefix.shape == (1, 4, 16)
    changed = np.abs(np.asarray(prefix - blank)).max(-1)[0]
    # 4x4 feature map pooled to 2x2: the top-left token sees the object; the bottom-right one, far away, does not.
    assert changed[0] > 1e-3 and changed[3] == 0.0
    with pytest.raises(UserError, match="num_prefix"):
        ImageEncoder(n_embd=16, num_prefix=3, channels=(8,), strides=(2,)).init(
            jax.random.key(0), jnp.asarray(image))


def test_captioner_section_of_the_report(tmp_path, monkeypatch):
    """`captioner_scores` with an oracle captioner and renderer: everything 1.0, and report.md shows the section
    (with the edit accuracy, or the reason it was skipped)."""
    from llmimg_jax.data.shapes.render import render
    from llmimg_jax.evaluation import captioning
    from llmimg_jax.evaluation.report import write_report

    same = Scene(tuple(ShapeObject("circle", "red", "large", 0, col) for col in range(3)), "black")  # no edit applies
    scenes = [SCENE, Scene(SCENE.objects[:1], "white"), same, SCENE]
    images = np.zeros((4, 32, 32, 3), np.uint8)
    images[:, 0, 0, 0] = np.arange(4)  # the oracle reads the scene's index from the first pixel
    monkeypatch.setattr(captioning, "validation_examples", lambda data_config, num: (images[:num], scenes[:num]))

    class Captioner:
        def describe(self, imgs):
            return [describe(scenes[int(im[0, 0, 0])]) for im in imgs]

    class Pipeline:
        def expand(self, prompts, seed=0):
            return [describe(apply_edit(parse_description(d), e)) for d, e in (p.split(EDIT_SEPARATOR) for p in prompts)]

        def generate_arrays(self, texts, seed=0):
            return np.stack([render(parse_description(t), 32, np.random.default_rng(seed)) for t in texts])

    scores = captioning.captioner_scores(Captioner(), Pipeline(), None, 4)
    assert scores["caption_exact"] == scores["round_trip"] == scores["edit"] == 1.0
    assert scores["edit_skipped_scenes"] == 1  # the three identical circles
    assert set(scores["per_attribute"]) == {"count", "background", "shape", "colour", "size", "cell"}
    no_edits = captioning.captioner_scores(Captioner(), Pipeline(), None, 4, edits=False)
    assert "edit" not in no_edits
    write_report({"captioner": {"workdir": "cap", **scores}}, str(tmp_path / "a"))
    text = (tmp_path / "a" / "report.md").read_text()
    assert "## Captioner (cap, 4 validation images)" in text and "| captioning exact match | 100.0 % |" in text
    assert "| captioning: colour | 100.0 % |" in text and "edits (image" in text
    write_report({"captioner": {**no_edits, "edit_skipped": "skipped: no edits"}}, str(tmp_path / "b"))
    assert "skipped: no edits" in (tmp_path / "b" / "report.md").read_text()
