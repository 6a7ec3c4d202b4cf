"""The Python pipeline: `TextToImagePipeline.from_workdir(W)(prompts, expand=True, ...)` -> images.

    pipe = llmimg_jax.TextToImagePipeline.from_workdir("runs/shapes_diffusion")
    out = pipe(["a red circle above a blue square"], expand=True, guidance=3.0, steps=50, seed=0)
    out.images[0].save("x.png"); print(out.expansions[0])

Prompts, and their expansions, pass the safety blocklist (`llmimg_jax.safety`; the default list unless another
is given); `postprocess=True` lightly denoises and stretches the contrast of the images. `best_of=N` (Shapes
generators) draws N images for each one returned and keeps the one the Shapes probe ranks first
(`evaluation/rerank.py`).
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Sequence

import numpy as np
from PIL import Image

from llmimg_jax.errors import UserError
from llmimg_jax.generator.load import LoadedGenerator, load_generator
from llmimg_jax.safety import Blocklist, load_blocklist

BATCH = 64  # prompts per sampling call; the last batch is padded so every call reuses one compiled loop


@dataclasses.dataclass
class PipelineOutput:
    images: list[Image.Image]        # num_images per prompt, prompt-major
    prompts: list[str]               # the prompts as given
    expansions: list[str] | None     # what the generator drew from, when expand=True


class TextToImagePipeline:
    def __init__(self, generator: LoadedGenerator, lm_workdir: str | None = None, *,
                 blocklist: Blocklist | None = None, reranker: Any = None):
        """`blocklist`: the prompt filter (default: the package's default list; `safety.NO_BLOCKLIST` for none).
        `reranker`: what `best_of` ranks with, any object with `choose(candidates [P, N, S, S, 3], texts [P]) ->
        (images [P, S, S, 3], indices [P])` (default: the Shapes probe's, `evaluation/rerank.py`)."""
        self.generator = generator
        self.lm_workdir = lm_workdir
        self.blocklist = load_blocklist() if blocklist is None else blocklist
        self._expander = None
        self._reranker = reranker

    @classmethod
    def from_workdir(cls, workdir: str, *, lm_workdir: str | None = None, use_ema: bool = True,
                     blocklist: Blocklist | None = None, reranker: Any = None) -> "TextToImagePipeline":
        """A generator workdir (or a quickstart workdir); its text encoder's LM workdir serves as the prompt
        expander unless another is given."""
        from llmimg_jax.quickstart import resolve_workdirs

        if not os.path.isdir(workdir):
            raise UserError(f"workdir '{workdir}' does not exist; pass the --workdir of a training run")
        generator_dir, quickstart_lm = resolve_workdirs(workdir)
        generator = load_generator(generator_dir, use_ema=use_ema)
        return cls(generator, lm_workdir or quickstart_lm or generator.config.text.lm_workdir or None,
                   blocklist=blocklist, reranker=reranker)

    @property
    def expander(self):
        if self._expander is None:
            if not self.lm_workdir:
                raise UserError("expansion needs a language model: pass --lm-workdir LM_WORKDIR (a run of "
                                "configs/shapes_lm.py); this generator's text encoder was not taken from one")
            from llmimg_jax.text.expander import load_expander

            self._expander = load_expander(self.lm_workdir)
        return self._expander

    @property
    def reranker(self):
        if self._reranker is None:
            source = self.generator.config.data.source
            if source != "shapes":
                raise UserError(f"best-of-N ranks images with the Shapes probe, but this generator was trained on "
                                f"data.source='{source}'; drop --best-of")
            from llmimg_jax.evaluation.probe import load_or_train_probe
            from llmimg_jax.evaluation.rerank import ProbeReranker

            self._reranker = ProbeReranker(load_or_train_probe(image_size=self.generator.image_size))
        return self._reranker

    def expand(self, prompts: Sequence[str], seed: int = 0) -> list[str]:
        """The prompts rewritten by the LM; a blocked term in a prompt (checked before the LM runs) or in its
        expansion is a UserError."""
        prompts = list(prompts)
        self.blocklist.check(prompts)
        expansions = self.expander.expand(prompts, seed=seed)
        self.blocklist.check(prompts, expansions=expansions)
        return expansions

    def generate_arrays(self, prompts: Sequence[str], *, seed: int = 0, num_images: int = 1, best_of: int = 1,
                        **options: Any) -> np.ndarray:
        """uint8 [len(prompts) * num_images, S, S, 3], prompt-major; deterministic for a seed. The raw sampler:
        no blocklist, no post-processing (`__call__` adds them). `best_of` > 1: each image is the probe's pick of
        that many drawn for its prompt."""
        if num_images < 1 or best_of < 1:
            raise UserError(f"--num-images and --best-of must be at least 1, got {num_images} and {best_of}")
        if best_of > 1:
            drawn = self.generate_arrays(prompts, seed=seed, num_images=num_images * best_of, **options)
            texts = [p for p in prompts for _ in range(num_images)]
            return self.choose(drawn.reshape(len(texts), best_of, *drawn.shape[1:]), texts)
        rows = [p for p in prompts for _ in range(num_images)]
        out = []
        for start in range(0, len(rows), BATCH):
            chunk = rows[start:start + BATCH]
            padded = chunk + [chunk[-1]] * (min(BATCH, len(rows)) - len(chunk))
            # Each chunk draws its own noise: fold the chunk index into the seed.
            images = self.generator.generate(padded, seed=seed * 100003 + start // BATCH, **options)
            out.append(images[:len(chunk)])
        return np.concatenate(out)

    def choose(self, candidates: np.ndarray, texts: Sequence[str]) -> np.ndarray:
        """The probe's pick [P, S, S, 3] of candidates [P, N, S, S, 3] drawn for texts [P]."""
        return self.reranker.choose(candidates, list(texts))[0]

    def __call__(self, prompts: Sequence[str] | str, *, expand: bool = False, seed: int = 0, num_images: int = 1,
                 best_of: int = 1, postprocess: bool = False, **options: Any) -> PipelineOutput:
        """Images for the prompts; `options` are the generator's (guidance, steps, sampler, eta; truncation).
        Blocked prompts are refused before anything is drawn, blocked expansions before drawing them."""
        prompts = [prompts] if isinstance(prompts, str) else list(prompts)
        if not prompts or any(not p.strip() for p in prompts):
            raise UserError("a prompt is empty; pass non-empty text")
        self.blocklist.check(prompts)
        expansions = self.expand(prompts, seed=seed) if expand else None
        arrays = self.generate_arrays(expansions or prompts, seed=seed, num_images=num_images, best_of=best_of,
                                      **options)
        if postprocess:
            from llmimg_jax.generator.postprocess import postprocess_images

            arrays = postprocess_images(arrays)
        return PipelineOutput([Image.fromarray(a) for a in arrays], prompts, expansions)
