"""Random-access example sources: `len(src)` and `src[i]` -> dict with `image` uint8 [S, S, 3] and `text` str.

Three kinds, chosen by `data.source`:
  shapes  the procedural Shapes world (its TFDS array_record build); `text` is the scene description and the
          Shapes fields (instructions, objects, background, ...) come along.
  tfds    any TFDS data set with an image and a text feature, built in the array_record format.
  folder  a folder of images with `captions.jsonl`, one `{"file": ..., "text": ...}` a line.
"""

from __future__ import annotations

import json
import logging
import os
from typing import Any

import numpy as np

from llmimg_jax.data.images import decode_image, load_image_file, resize_and_center_crop
from llmimg_jax.errors import UserError

log = logging.getLogger(__name__)

CAPTIONS_FILE = "captions.jsonl"


def resolve_data_dir(data_config) -> str:
    """`data.data_dir`, else `$LLMIMG_DATA_DIR`, else `~/.cache/llmimg_jax/data`."""
    return os.path.expanduser(
        data_config.data_dir or os.environ.get("LLMIMG_DATA_DIR") or os.path.join("~", ".cache", "llmimg_jax", "data"))


class ShapesSource:
    """The Shapes world's split; adds `text` (= the description) and makes sure images are S x S."""

    def __init__(self, source, image_size: int):
        self._source = source
        self.image_size = image_size
        self.num_skipped = 0

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        example = dict(self._source[index])
        example["image"] = resize_and_center_crop(example["image"], self.image_size)
        example["text"] = example["description"]
        return example


class TfdsSource:
    """A TFDS split read through its random-access data source (array_record; no TensorFlow needed)."""

    def __init__(self, name: str, split: str, *, image_key: str, text_key: str, image_size: int,
                 data_dir: str | None):
        import tensorflow_datasets as tfds

        try:
            builder = tfds.builder(name, data_dir=data_dir)
        except tfds.core.registered.DatasetNotFoundError:
            raise UserError(f"TFDS data set '{name}' not found in {data_dir or 'the TFDS default data_dir'}; "
                            "set data.tfds_name and data.data_dir to a built data set") from None
        if not builder.is_prepared():
            raise UserError(f"TFDS data set '{name}' is not built in {builder.data_dir}; build it with "
                            f"`tfds build {name} --file_format=array_record --data_dir=DIR` and set data.data_dir")
        features = builder.info.features
        for key, what in ((image_key, "data.image_key"), (text_key, "data.text_key")):
            if key not in features:
                raise UserError(f"TFDS data set '{name}' has no feature '{key}' ({what}); "
                                f"its features: {', '.join(sorted(features.keys()))}")
        try:
            self._source = builder.as_data_source(split=split)
        except NotImplementedError:
            raise UserError(f"TFDS data set '{name}' in {builder.data_dir} is not in a random-access format; "
                            "rebuild it with --file_format=array_record") from None
        except ValueError as e:
            raise UserError(f"TFDS data set '{name}' has no split '{split}' "
                            f"(splits: {', '.join(builder.info.splits.keys())}); set data.train_split / "
                            f"data.eval_split") from e
        self.image_key, self.text_key, self.image_size = image_key, text_key, image_size
        self.num_skipped = 0

    def __len__(self) -> int:
        return len(self._source)

    def __getitem__(self, index: int) -> dict[str, Any]:
        example = self._source[index]
        image = example[self.image_key]
        if isinstance(image, bytes):  # an undecoded image feature
            image = decode_image(image)
        text = example[self.text_key]
        if isinstance(text, bytes):
            text = text.decode("utf-8")
        return {"image": resize_and_center_crop(np.asarray(image), self.image_size), "text": str(text)}


def _read_captions(path: str) -> list[tuple[str, str]]:
    """Parses captions.jsonl into (file, text) pairs; a malformed line is a UserError naming file and line."""
    entries = []
    with open(path, encoding="utf-8") as f:
        for line_number, line in enumerate(f, start=1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as e:
                raise UserError(f"{path} line {line_number}: not valid JSON ({e.msg}); "
                                'write one {"file": ..., "text": ...} object a line') from None
            if (not isinstance(record, dict) or not isinstance(record.get("file"), str)
                    or not isinstance(record.get("text"), str)):
                raise UserError(f'{path} line {line_number}: expected {{"file": str, "text": str}}, got {line.strip()[:80]}')
            entries.append((record["file"], record["text"]))
    return entries


class FolderSource:
    """Images listed in `captions.jsonl` (in `folder/SPLIT/` when that exists, else in `folder/` for every split).

    Every listed image is decoded once when the source is opened; unreadable ones are skipped (one warning,
    counted in `num_skipped`), so the set of examples and their indices are fixed for the whole run.
    """

    def __init__(self, folder: str, split: str, image_size: int):
        folder = os.path.expanduser(folder)
        if not folder or not os.path.isdir(folder):
            raise UserError(f"image folder '{folder}' does not exist; set data.folder to a folder with {CAPTIONS_FILE}")
        if os.path.isfile(os.path.join(folder, split, CAPTIONS_FILE)):
            folder = os.path.join(folder, split)
        captions = os.path.join(folder, CAPTIONS_FILE)
        if not os.path.isfile(captions):
            raise UserError(f"'{folder}' has no {CAPTIONS_FILE}; write one "
                            '{"file": ..., "text": ...} object a line')
        entries = _read_captions(captions)
        self.folder, self.image_size = folder, image_size
        self._entries = []
        skipped = []
        for file, text in entries:
            try:
                load_image_file(os.path.join(folder, file))
            except (OSError, ValueError, SyntaxError):  # PIL's errors for missing, truncated or non-image files
                skipped.append(file)
                continue
            self._entries.append((file, text))
        self.num_skipped = len(skipped)
        if skipped:
            log.warning("skipped %d of %d images in %s (unreadable): first: %s",
                        len(skipped), len(entries), folder, skipped[0])
        if not self._entries:
            raise UserError(f"no readable images in '{folder}' ({len(entries)} listed in {CAPTIONS_FILE}); "
                            "add images or fix the file names")

    def __len__(self) -> int:
        return len(self._entries)

    def __getitem__(self, index: int) -> dict[str, Any]:
        file, text = self._entries[index]
        image = load_image_file(os.path.join(self.folder, file))
        return {"image": resize_and_center_crop(image, self.image_size), "text": text}


def make_source(data_config, split: str):
    """The example source for `split` described by the `data` config section."""
    kind = data_config.source
    size = data_config.image_size
    if kind == "shapes":
        from llmimg_jax.data.shapes.tfds_builder import load_shapes_split  # built lazily, on first use

        source = load_shapes_split(
            resolve_data_dir(data_config), size, split, num_train=data_config.shapes_num_train,
            num_validation=data_config.shapes_num_validation, num_test=data_config.shapes_num_test,
            seed=data_config.shapes_seed)
        return ShapesSource(source, size)
    if kind == "tfds":
        if not data_config.tfds_name:
            raise UserError("data.source is 'tfds' but data.tfds_name is empty; set --config.data.tfds_name=NAME")
        data_dir = data_config.data_dir or os.environ.get("LLMIMG_DATA_DIR") or None
        return TfdsSource(data_config.tfds_name, split, image_key=data_config.image_key,
                          text_key=data_config.text_key, image_size=size,
                          data_dir=os.path.expanduser(data_dir) if data_dir else None)
    if kind == "folder":
        return FolderSource(data_config.folder, split, size)
    raise UserError(f"unknown data.source '{kind}'; use 'shapes', 'tfds' or 'folder'")


def validation_texts(data_config, num: int) -> list[str]:
    """The first `num` captions of the evaluation split (prompts for sample grids)."""
    source = make_source(data_config, data_config.eval_split)
    return [source[i]["text"] for i in range(min(num, len(source)))]
