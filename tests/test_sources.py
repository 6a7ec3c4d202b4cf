"""Example sources: a folder with bad files among good ones, a tiny TFDS array_record data set, the Shapes wiring."""

import json
import logging
import sys
import types

import numpy as np
import pytest
import tensorflow_datasets as tfds
from PIL import Image

from llmimg_jax.config import base_config
from llmimg_jax.data.sources import make_source
from llmimg_jax.errors import UserError


def block_mean(image, factor):
    """float64 area downsampling by an integer factor: the reference for shrinking."""
    h, w, c = image.shape
    return image.astype(np.float64).reshape(h // factor, factor, w // factor, factor, c).mean(axis=(1, 3))


def data_config(**kw):
    config = base_config().data
    config.update(kw)
    return config


def write_folder(folder, rng):
    wide = rng.integers(0, 256, (20, 40, 3), dtype=np.uint8)
    tall = rng.integers(0, 256, (40, 20, 3), dtype=np.uint8)
    small = np.broadcast_to(np.array([30, 140, 220], np.uint8), (8, 8, 3))
    Image.fromarray(wide).save(folder / "wide.png")
    Image.fromarray(tall).save(folder / "tall.png")
    Image.fromarray(np.ascontiguousarray(small)).save(folder / "small.png")
    png = (folder / "wide.png").read_bytes()
    (folder / "bad.png").write_bytes(png[: len(png) // 2])  # truncated
    (folder / "notes.txt").write_text("not an image")
    lines = [{"file": "wide.png", "text": "a wide one"}, {"file": "bad.png", "text": "broken"},
             {"file": "tall.png", "text": "a tall one"}, {"file": "notes.txt", "text": "text file"},
             {"file": "small.png", "text": "ünïcode small"}]
    (folder / "captions.jsonl").write_text("\n".join(json.dumps(line) for line in lines) + "\n", encoding="utf-8")
    return wide, tall, small


def test_folder_skips_unreadable_images_and_resizes(tmp_path, caplog):
    wide, tall, small = write_folder(tmp_path, np.random.default_rng(0))
    with caplog.at_level(logging.WARNING):
        source = make_source(data_config(source="folder", folder=str(tmp_path), image_size=10), "train")
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert warnings == [f"skipped 2 of 5 images in {tmp_path} (unreadable): first: bad.png"]
    assert source.num_skipped == 2
    assert len(source) == 3
    examples = [source[i] for i in range(3)]
    assert [e["text"] for e in examples] == ["a wide one", "a tall one", "ünïcode small"]
    for e in examples:
        assert e["image"].shape == (10, 10, 3) and e["image"].dtype == np.uint8
    # Shorter side 20 -> 10 (area), then the center 10 of the 20 on the long side.
    np.testing.assert_allclose(examples[0]["image"], block_mean(wide, 2)[:, 5:15], atol=1)
    np.testing.assert_allclose(examples[1]["image"], block_mean(tall, 2)[5:15, :], atol=1)
    # Upscaling a constant image (bicubic) keeps it constant.
    np.testing.assert_array_equal(examples[2]["image"], np.broadcast_to(small[0, 0], (10, 10, 3)))


def test_folder_errors(tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        make_source(data_config(source="folder", folder=str(tmp_path / "missing")), "train")
    with pytest.raises(UserError, match="no captions.jsonl"):
        make_source(data_config(source="folder", folder=str(tmp_path)), "train")
    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "a.png")
    captions = tmp_path / "captions.jsonl"
    captions.write_text('{"file": "a.png", "text": "ok"}\n{"file": "a.png", "text": \n')
    with pytest.raises(UserError, match=rf"{captions} line 2: not valid JSON"):
        make_source(data_config(source="folder", folder=str(tmp_path)), "train")
    captions.write_text('{"file": "a.png"}\n')
    with pytest.raises(UserError, match="line 1: expected"):
        make_source(data_config(source="folder", folder=str(tmp_path)), "train")


def test_folder_split_subfolder(tmp_path):
    for split, value in (("train", 10), ("validation", 200)):
        (tmp_path / split).mkdir()
        Image.fromarray(np.full((4, 4, 3), value, np.uint8)).save(tmp_path / split / "x.png")
        (tmp_path / split / "captions.jsonl").write_text(json.dumps({"file": "x.png", "text": split}) + "\n")
    for split, value in (("train", 10), ("validation", 200)):
        example = make_source(data_config(source="folder", folder=str(tmp_path), image_size=4), split)[0]
        assert example["text"] == split and (example["image"] == value).all()


class LlmimgTestCaptions(tfds.core.GeneratorBasedBuilder):
    """A tiny image + text data set, written in the array_record format."""

    VERSION = tfds.core.Version("1.0.0")
    IMAGES = np.random.default_rng(1).integers(0, 256, (5, 16, 24, 3), dtype=np.uint8)

    def _info(self):
        return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
            "img": tfds.features.Tensor(shape=(16, 24, 3), dtype=np.uint8),
            "caption": tfds.features.Text(),
        }))

    def _split_generators(self, dl_manager):
        return {"train": self._generate_examples(range(4)), "validation": self._generate_examples([4])}

    def _generate_examples(self, indices):
        for i in indices:
            yield i, {"img": self.IMAGES[i], "caption": f"caption nº {i}"}


def test_tfds_source(tmp_path):
    LlmimgTestCaptions(data_dir=str(tmp_path), file_format="array_record").download_and_prepare()
    config = data_config(source="tfds", tfds_name="llmimg_test_captions", data_dir=str(tmp_path), image_key="img",
                         text_key="caption", image_size=8)
    train = make_source(config, "train")
    assert len(train) == 4 and len(make_source(config, "validation")) == 1
    # The array_record source keeps the generator's keys in its own order; match examples by caption.
    seen = set()
    for j in range(4):
        example = train[j]
        assert isinstance(example["text"], str)
        i = int(example["text"].removeprefix("caption nº "))
        seen.add(i)
        np.testing.assert_allclose(example["image"], block_mean(LlmimgTestCaptions.IMAGES[i], 2)[:, 2:10], atol=1)
    assert seen == {0, 1, 2, 3}
    with pytest.raises(UserError, match="no feature 'image'"):
        make_source(data_config(source="tfds", tfds_name="llmimg_test_captions", data_dir=str(tmp_path),
                                text_key="caption"), "train")
    with pytest.raises(UserError, match="no split 'test'"):
        make_source(config, "test")
    with pytest.raises(UserError, match="not found"):
        make_source(data_config(source="tfds", tfds_name="llmimg_no_such_set", data_dir=str(tmp_path)), "train")


def test_shapes_source_wiring(tmp_path, monkeypatch):
    calls = []

    def load_shapes_split(data_dir, image_size, split, *, num_train, num_validation, num_test, seed):
        calls.append((data_dir, image_size, split, num_train, num_validation, num_test, seed))
        return [{"image": np.full((image_size, image_size, 3), 7, np.uint8), "description": "a red circle",
                 "instructions": ["draw a red circle"], "instruction_kinds": ["plain"], "objects": [],
                 "background": "white"}]

    fake = types.ModuleType("llmimg_jax.data.shapes.tfds_builder")
    fake.load_shapes_split = load_shapes_split
    monkeypatch.setitem(sys.modules, "llmimg_jax.data.shapes.tfds_builder", fake)
    monkeypatch.setenv("LLMIMG_DATA_DIR", str(tmp_path))
    source = make_source(data_config(source="shapes", image_size=16, shapes_num_train=3, shapes_seed=9), "train")
    assert calls == [(str(tmp_path), 16, "train", 3, 1000, 1000, 9)]
    example = source[0]
    assert example["text"] == "a red circle" and example["background"] == "white"
    assert example["image"].shape == (16, 16, 3)
    monkeypatch.delenv("LLMIMG_DATA_DIR")
    make_source(data_config(source="shapes", data_dir=str(tmp_path / "d")), "validation")
    assert calls[-1][0] == str(tmp_path / "d")
    with pytest.raises(UserError, match="unknown data.source"):
        make_source(data_config(source="nope"), "train")
