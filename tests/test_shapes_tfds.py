"""The `shapes` TFDS builder: a tiny build read back through as_data_source, deterministic, no TensorFlow."""

import hashlib
import importlib.util
import os

import numpy as np
import pytest

from llmimg_jax.data.shapes.constraints import KINDS, parse_instruction, satisfies
from llmimg_jax.data.shapes.grammar import describe
from llmimg_jax.data.shapes.reader import read_image
from llmimg_jax.data.shapes.scene import Scene
from llmimg_jax.data.shapes.tfds_builder import (ShapesBuilder, config_name, generate_example, load_shapes_split,
                                                 make_config)
from llmimg_jax.errors import UserError

SIZES = dict(num_train=40, num_validation=10, num_test=10, seed=1)


def _digests(root: str) -> dict[str, str]:
    out = {}
    for dirpath, _, files in os.walk(root):
        for f in files:
            if "array_record" in f:
                with open(os.path.join(dirpath, f), "rb") as fh:
                    out[os.path.relpath(os.path.join(dirpath, f), root)] = hashlib.sha256(fh.read()).hexdigest()
    return out


def test_tensorflow_is_not_installed():
    assert importlib.util.find_spec("tensorflow") is None


def test_config_names():
    assert config_name(32) == "s32" and config_name(64, 200, 50, 50, 1) == "s64_n200-50-50_seed1"
    c = make_config("s32_n200-50-50_seed1")
    assert (c.image_size, c.num_train, c.num_validation, c.num_test, c.seed) == (32, 200, 50, 50, 1)
    assert make_config("s64").num_train == 20000
    for bad in ("s32_n200", "32", "s32_seed0", "s32_n20000-1000-1000"):  # malformed or not canonical
        with pytest.raises(UserError):
            make_config(bad)


def test_tiny_build_reads_back_and_is_deterministic(tmp_path):
    first = {split: load_shapes_split(str(tmp_path / "a"), 32, split, **SIZES)
             for split in ("train", "validation", "test")}
    assert [len(first[s]) for s in ("train", "validation", "test")] == [40, 10, 10]
    kinds = set()
    for split, source in first.items():
        for i in range(len(source)):
            ex = source[i]
            assert ex["image"].dtype == np.uint8 and ex["image"].shape == (32, 32, 3)
            scene = Scene.from_json({"objects": ex["objects"], "background": ex["background"]})
            assert ex["description"] == describe(scene)
            assert read_image(ex["image"]) == scene  # the stored image shows the stored ground truth
            assert len(ex["instructions"]) == len(ex["instruction_kinds"]) >= 1
            for kind, text in zip(ex["instruction_kinds"], ex["instructions"]):
                assert kind in KINDS and satisfies(scene, parse_instruction(text))
                kinds.add(kind)
            expected = generate_example(32, 1, split, i)  # example i of the split, exactly
            np.testing.assert_array_equal(ex["image"], expected["image"])
            assert {k: v for k, v in ex.items() if k != "image"} == \
                {k: v for k, v in expected.items() if k != "image"}
    assert kinds == set(KINDS)
    assert len({first["train"][i]["description"] for i in range(40)}) > 30  # examples differ
    with pytest.raises(IndexError):
        first["test"][10]
    batch = first["train"].__getitems__([3, 0])
    assert batch[0]["description"] == first["train"][3]["description"]

    # A second build elsewhere gives the same bytes; a second load reuses the complete build.
    load_shapes_split(str(tmp_path / "b"), 32, "train", **SIZES)
    a, b = _digests(str(tmp_path / "a")), _digests(str(tmp_path / "b"))
    assert len(a) == 3 and a == b
    built = [os.path.join(d, f) for d, _, fs in os.walk(tmp_path / "a") for f in fs if "array_record" in f]
    mtimes = [os.stat(p).st_mtime_ns for p in built]
    again = load_shapes_split(str(tmp_path / "a"), 32, "validation", **SIZES)
    assert [os.stat(p).st_mtime_ns for p in built] == mtimes and again[2]["description"] == \
        first["validation"][2]["description"]
    # Another seed gives other data.
    assert [generate_example(32, 2, "train", i)["description"] for i in range(5)] != \
        [first["train"][i]["description"] for i in range(5)]

def test_builder_by_config_name_and_s64(tmp_path):
    builder = ShapesBuilder(config="s64_n3-2-2", data_dir=str(tmp_path), file_format="array_record")
    builder.download_and_prepare()
    source = builder.as_data_source(split="validation")
    assert len(source) == 2 and np.asarray(source[0]["image"]).shape == (64, 64, 3)


def test_bad_arguments_are_user_errors(tmp_path):
    with pytest.raises(UserError, match="split"):
        load_shapes_split(str(tmp_path), 32, "dev", **SIZES)
    with pytest.raises(UserError, match="too small"):
        load_shapes_split(str(tmp_path), 16, "train", **SIZES)
    with pytest.raises(UserError):
        load_shapes_split(str(tmp_path), 32, "train", num_train=0, num_validation=1, num_test=1, seed=0)
