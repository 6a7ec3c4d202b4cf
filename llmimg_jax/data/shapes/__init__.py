"""The Shapes world (SPEC.md): procedural captioned images with exact ground truth.

The TFDS builder and `load_shapes_split` live in `tfds_builder` (not imported here: it pulls in TFDS).
"""

from llmimg_jax.data.shapes.constraints import KINDS, Instruction, ObjectPattern, parse_instruction, satisfies
from llmimg_jax.data.shapes.edits import apply_edit, parse_edit, sample_edit
from llmimg_jax.data.shapes.grammar import describe, parse_description
from llmimg_jax.data.shapes.instructions import instructions_for, sample_example, sample_instruction
from llmimg_jax.data.shapes.reader import read_image
from llmimg_jax.data.shapes.render import place, render
from llmimg_jax.data.shapes.scene import Scene, ShapeObject, sample_scene
from llmimg_jax.data.shapes.spec import ShapesError
