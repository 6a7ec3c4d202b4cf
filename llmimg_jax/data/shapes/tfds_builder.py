"""The `shapes` TFDS builder (array_record, no TensorFlow) and `load_shapes_split`, which builds on demand."""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any

import numpy as np
import tensorflow_datasets as tfds
import tqdm
from etils import epath

from llmimg_jax.data.shapes.grammar import describe
from llmimg_jax.data.shapes.instructions import sample_example
from llmimg_jax.data.shapes.render import check_image_size, render
from llmimg_jax.errors import UserError

SPLITS = ("train", "validation", "test")
DEFAULT_SIZES = (20000, 1000, 1000)  # train / validation / test, as in the data config
_CONFIG_NAME = re.compile(r"s(\d+)(?:_n(\d+)-(\d+)-(\d+))?(?:_seed(\d+))?")


@dataclasses.dataclass(eq=False)  # TFDS configs are plain (non-frozen) dataclasses
class ShapesConfig(tfds.core.BuilderConfig):
    image_size: int = 32
    num_train: int = DEFAULT_SIZES[0]
    num_validation: int = DEFAULT_SIZES[1]
    num_test: int = DEFAULT_SIZES[2]
    seed: int = 0


def config_name(image_size: int, num_train: int = DEFAULT_SIZES[0], num_validation: int = DEFAULT_SIZES[1],
                num_test: int = DEFAULT_SIZES[2], seed: int = 0) -> str:
    """`s32` for the defaults, else e.g. `s32_n200-50-50_seed1`: the name says everything the data depends on."""
    sizes = (num_train, num_validation, num_test)
    name = f"s{image_size}" + ("" if sizes == DEFAULT_SIZES else "_n{}-{}-{}".format(*sizes))
    return name + (f"_seed{seed}" if seed else "")


def make_config(name: str) -> ShapesConfig:
    """The config a name like `s64` or `s32_n200-50-50_seed1` stands for."""
    m = _CONFIG_NAME.fullmatch(name)
    if not m:
        raise UserError(f"shapes config '{name}' is not like 's32' or 's32_n200-50-50_seed1'; fix the name")
    size, train, validation, test, seed = m.groups()
    sizes = tuple(int(x) for x in (train, validation, test)) if train else DEFAULT_SIZES
    config = ShapesConfig(name=name, version="1.0.0", image_size=int(size), num_train=sizes[0],
                          num_validation=sizes[1], num_test=sizes[2], seed=int(seed or 0),
                          description=f"{size}x{size} images; {sizes[0]}/{sizes[1]}/{sizes[2]} examples; "
                                      f"seed {int(seed or 0)}")
    if config_name(config.image_size, *sizes, config.seed) != name:
        raise UserError(f"shapes config '{name}' is not in canonical form; use "
                        f"'{config_name(config.image_size, *sizes, config.seed)}'")
    return config


def generate_example(image_size: int, seed: int, split: str, index: int) -> dict[str, Any]:
    """Example `index` of `split`: its own random stream, so any example can be made alone and the same."""
    rng = np.random.default_rng([seed, SPLITS.index(split), index])
    scene, instructions = sample_example(rng)
    return {
        "image": render(scene, image_size, rng),
        "description": describe(scene),
        "instructions": [text for _, text in instructions],
        "instruction_kinds": [kind for kind, _ in instructions],
        "objects": [o.to_json() for o in scene.objects],
        "background": scene.background,
    }


class ShapesBuilder(tfds.core.GeneratorBasedBuilder):
    """The Shapes world (see SPEC.md): procedural captioned images with exact ground truth."""

    name = "shapes"
    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "Shapes world v1."}
    BUILDER_CONFIGS = [make_config("s32"), make_config("s64")]

    @tfds.core.utils.classproperty
    @classmethod
    def code_path(cls) -> epath.Path:
        # TFDS's own lookup needs the optional `importlib_resources` package for an installed package's path.
        return epath.Path(__file__)

    @classmethod
    def get_builder_config(cls, name: str, version=None):
        # Any canonical name (split sizes, seed) is a valid config, not only the two listed ones.
        return super().get_builder_config(name, version) or make_config(name)

    def _info(self) -> tfds.core.DatasetInfo:
        S = self.builder_config.image_size
        text = tfds.features.Text()
        return tfds.core.DatasetInfo(
            builder=self,
            description="Procedural captioned images of 1-3 shapes on a 3x3 grid, with exact ground truth.",
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=(S, S, 3), dtype=np.uint8),
                "description": text,
                "instructions": tfds.features.Sequence(text),
                "instruction_kinds": tfds.features.Sequence(text),
                "objects": tfds.features.Sequence({
                    "shape": text, "colour": text, "size": text,
                    "row": tfds.features.Tensor(shape=(), dtype=np.int32),
                    "col": tfds.features.Tensor(shape=(), dtype=np.int32),
                }),
                "background": text,
            }),
            disable_shuffling=True,  # example i of a split is generate_example(..., i)
        )

    def _split_generators(self, dl_manager):
        c = self.builder_config
        check_image_size(c.image_size)
        counts = (c.num_train, c.num_validation, c.num_test)
        return {split: self._generate_examples(split, n) for split, n in zip(SPLITS, counts)}

    def _generate_examples(self, split: str, num: int):
        c = self.builder_config
        for i in tqdm.tqdm(range(num), desc=f"shapes/{c.name} {split}", unit="ex", leave=False):
            yield i, generate_example(c.image_size, c.seed, split, i)


class ShapesSource:
    """Random access to one built split; `source[i]` is a dict of plain Python / numpy values."""

    def __init__(self, data_source):
        self._source = data_source

    def __len__(self) -> int:
        return len(self._source)

    @staticmethod
    def _decode(raw: dict) -> dict[str, Any]:
        text = lambda x: x.decode() if isinstance(x, bytes) else str(x)
        objects = raw["objects"]
        return {
            "image": np.asarray(raw["image"], np.uint8),
            "description": text(raw["description"]),
            "instructions": [text(x) for x in raw["instructions"]],
            "instruction_kinds": [text(x) for x in raw["instruction_kinds"]],
            "objects": [{"shape": text(objects["shape"][j]), "colour": text(objects["colour"][j]),
                         "size": text(objects["size"][j]), "row": int(objects["row"][j]),
                         "col": int(objects["col"][j])} for j in range(len(objects["shape"]))],
            "background": text(raw["background"]),
        }

    def __getitem__(self, index: int) -> dict[str, Any]:
        if not -len(self) <= index < len(self):
            raise IndexError(f"example {index} is outside the split of {len(self)} examples")
        return self._decode(self._source[index % len(self)])

    def __getitems__(self, indices) -> list[dict[str, Any]]:
        return [self._decode(raw) for raw in self._source.__getitems__(list(indices))]


def default_data_dir(data_dir: str = "") -> str:
    """`data_dir`, else $LLMIMG_DATA_DIR, else ~/.cache/llmimg_jax/data."""
    return data_dir or os.environ.get("LLMIMG_DATA_DIR") or os.path.expanduser("~/.cache/llmimg_jax/data")


def load_shapes_split(data_dir: str, image_size: int, split: str, *, num_train: int = DEFAULT_SIZES[0],
                      num_validation: int = DEFAULT_SIZES[1], num_test: int = DEFAULT_SIZES[2],
                      seed: int = 0) -> ShapesSource:
    """One split of the Shapes data set, built under `data_dir` first if needed (a complete build is reused)."""
    if split not in SPLITS:
        raise UserError(f"unknown shapes split '{split}'; use one of {', '.join(SPLITS)}")
    if min(num_train, num_validation, num_test) < 1 or seed < 0:
        raise UserError("shapes split sizes must be at least 1 and the seed non-negative; fix data.shapes_*")
    try:
        check_image_size(image_size)
    except ValueError as e:
        raise UserError(str(e)) from None
    name = config_name(image_size, num_train, num_validation, num_test, seed)
    builder = ShapesBuilder(config=name, data_dir=default_data_dir(data_dir), file_format="array_record")
    builder.download_and_prepare()  # a no-op when this config is already built
    return ShapesSource(builder.as_data_source(split=split))
