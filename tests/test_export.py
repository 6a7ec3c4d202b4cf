"""Exporting a split: PNG files, descriptions.txt and examples.jsonl line up with the source."""

import json
import os

import numpy as np
import pytest
from PIL import Image

from llmimg_jax.data.export import export_split
from llmimg_jax.data.shapes.tfds_builder import generate_example
from llmimg_jax.errors import UserError


def test_export_split_writes_images_descriptions_and_fields(tmp_path):
    source = [generate_example(32, 0, "validation", i) for i in range(6)]
    out = str(tmp_path / "export")
    files = export_split(source, out, 4)
    assert files == ["00000.png", "00001.png", "00002.png", "00003.png"]
    assert sorted(os.listdir(out)) == files + ["descriptions.txt", "examples.jsonl"]
    with open(os.path.join(out, "descriptions.txt")) as f:
        assert f.read().splitlines() == [ex["description"] for ex in source[:4]]
    with open(os.path.join(out, "examples.jsonl")) as f:
        lines = [json.loads(line) for line in f]
    for i, (line, ex) in enumerate(zip(lines, source)):
        np.testing.assert_array_equal(np.asarray(Image.open(os.path.join(out, line["file"]))), ex["image"])
        assert line == {**{k: v for k, v in ex.items() if k != "image"}, "file": f"{i:05d}.png"}
    assert len(lines) == 4


def test_export_rejects_bad_counts(tmp_path):
    source = [generate_example(32, 0, "test", i) for i in range(2)]
    for num in (0, 3):
        with pytest.raises(UserError, match="--num"):
            export_split(source, str(tmp_path), num)
