"""The prompt expander at inference: instruction -> a complete, explicit description (y = LM(x)).

Where the data has a grammar (the Shapes world), every expansion is checked: it must parse as a description and
satisfy the instruction. An invalid one is resampled up to `expand.retries` times; after that the instruction
itself is passed on, with a warning. The first attempt is greedy, so expansion is deterministic for a seed.
Free text (an instruction outside the spec's forms) is checked in part (`mentions_hold`): the description must use
every colour, shape, size and background word it names and have as many objects as it introduces; when no attempt
does, the first valid description is kept, with a warning, since it still serves the generator better than the
free text.

With `lm.instruction_encoder="bert"` the instruction reaches GPT-2 only as a prefix (`instruction_prefix`, see
bert_prefix.py) and GPT-2's prompt is just `<|sep|>`.
"""

from __future__ import annotations

import warnings
from typing import Any, Callable, Sequence

import jax
import ml_collections
import numpy as np

from llmimg_jax.data.shapes.constraints import parse_instruction, text_holds
from llmimg_jax.data.shapes.grammar import parse_description
from llmimg_jax.data.shapes.spec import ShapesError
from llmimg_jax.errors import UserError
from llmimg_jax.text.edit_format import edited_scene
from llmimg_jax.text.gpt2 import GPT2
from llmimg_jax.text.prompt_format import prompt_ids
from llmimg_jax.text.sampling import generate

# instructions -> (prefix_embeds [N, P, n_embd], prefix_mask [N, P])
InstructionPrefix = Callable[[Sequence[str]], tuple[jax.Array, jax.Array]]


def is_description(text: str) -> bool:
    """True when `text` parses as a Shapes description."""
    try:
        parse_description(text)
        return True
    except ShapesError:
        return False


def is_free_text(instruction: str) -> bool:
    """True for an instruction in none of the spec's forms and not an edit prompt."""
    if edited_scene(instruction) is not None:
        return False
    try:
        parse_instruction(instruction)
        return False
    except ShapesError:
        return True


def shapes_check(instruction: str, description: str) -> bool:
    """True when `description` is a valid Shapes description that satisfies `instruction`.

    An edit prompt ("<description>; <edit>", edit_format.py) is satisfied only by the edited scene itself. An
    instruction outside the Shapes grammar (free text) is checked in part: `mentions_hold`."""
    try:
        scene = parse_description(description)
    except ShapesError:
        return False
    edited = edited_scene(instruction)
    if edited is not None:
        return scene == edited
    return text_holds(instruction, scene)


class Expander:
    """Batched expansion with a GPT-2 prompt expander; `validate` turns on the Shapes check and retries.
    `instruction_prefix`, when given, reads the instructions (GPT-2 then sees them only through it)."""

    def __init__(self, model: GPT2, params: Any, tokenizer, expand: ml_collections.ConfigDict, *,
                 validate: bool = True, instruction_prefix: InstructionPrefix | None = None):
        self.model, self.params, self.tokenizer, self.cfg = model, params, tokenizer, expand
        self.validate = validate
        self.instruction_prefix = instruction_prefix
        self.fallbacks = 0

    def _prompt_batch(self, prompts: Sequence[str]) -> tuple[np.ndarray, np.ndarray]:
        """Left-padded prompt ids and mask."""
        rows = [prompt_ids(self.tokenizer, p) for p in prompts]
        width = max(len(r) for r in rows)
        if width >= self.model.config.n_positions:
            longest = prompts[max(range(len(rows)), key=lambda i: len(rows[i]))]
            raise UserError(f"prompt {longest[:40]!r}... is {width} tokens, longer than the language model's "
                            f"context of {self.model.config.n_positions}; shorten it")
        ids = np.full((len(rows), width), self.tokenizer.pad_token_id, np.int32)
        mask = np.zeros((len(rows), width), np.int32)
        for i, row in enumerate(rows):
            ids[i, width - len(row):] = row
            mask[i, width - len(row):] = 1
        return ids, mask

    def _sample(self, prompts: Sequence[str], key: jax.Array, greedy: bool) -> list[str]:
        prefix = prefix_mask = None
        if self.instruction_prefix is None:
            ids, mask = self._prompt_batch(prompts)
        else:
            prefix, prefix_mask = self.instruction_prefix(prompts)
            ids = np.asarray([prompt_ids(self.tokenizer, "")] * len(prompts), np.int32)  # just <|sep|>
            mask = np.ones_like(ids)
        # The description gets whatever context the prompt leaves, up to expand.max_new_tokens.
        used = ids.shape[1] + (0 if prefix is None else prefix.shape[1])
        new_tokens = min(int(self.cfg.max_new_tokens), self.model.config.n_positions - used)
        out = generate(self.model, self.params, ids, mask, max_new_tokens=new_tokens, rng=key,
                       temperature=float(self.cfg.temperature), top_k=int(self.cfg.top_k),
                       top_p=float(self.cfg.top_p), greedy=greedy, eos_id=self.tokenizer.eos_token_id,
                       pad_id=self.tokenizer.pad_token_id, prefix_embeds=prefix, prefix_mask=prefix_mask)
        texts = []
        for row in np.asarray(out):
            end = np.flatnonzero(row == self.tokenizer.eos_token_id)
            texts.append(self.tokenizer.decode(row[: end[0] if len(end) else len(row)]).strip())
        return texts

    def expand_with_status(self, prompts: Sequence[str], seed: int = 0) -> tuple[list[str], list[bool]]:
        """Expansions and whether each passed the check (always True without validation). A free-text
        instruction that no attempt passes gets its first valid description, if any attempt wrote one."""
        prompts = list(prompts)
        key = jax.random.key(seed)
        results = self._sample(prompts, key, greedy=True)
        if not self.validate:
            return results, [True] * len(prompts)
        ok = [shapes_check(p, r) for p, r in zip(prompts, results)]
        free = [not good and is_free_text(p) for p, good in zip(prompts, ok)]
        for attempt in range(int(self.cfg.retries)):
            todo = [i for i, good in enumerate(ok) if not good]
            if not todo:
                break
            retried = self._sample([prompts[i] for i in todo], jax.random.fold_in(key, attempt + 1), greedy=False)
            for i, text in zip(todo, retried):
                if shapes_check(prompts[i], text):
                    results[i], ok[i] = text, True
                elif free[i] and not is_description(results[i]) and is_description(text):
                    results[i] = text
        return results, ok

    def expand(self, prompts: Sequence[str], seed: int = 0) -> list[str]:
        """Expansions; an instruction whose expansions all failed the check is passed on unchanged, except free
        text with a valid description (see the module's docstring)."""
        results, ok = self.expand_with_status(prompts, seed)
        failed = [i for i, good in enumerate(ok) if not good]
        kept = [i for i in failed if is_free_text(prompts[i]) and is_description(results[i])]
        if kept:
            warnings.warn(f"{len(kept)} of {len(ok)} instructions are free text that no expansion named in full after "
                          f"{int(self.cfg.retries)} retries (a colour, shape, size or background word left out, or "
                          f"another number of objects); each keeps its first valid description (first: "
                          f"{prompts[kept[0]]!r})", stacklevel=2)
        failed = [i for i in failed if i not in kept]
        if failed:
            self.fallbacks += len(failed)
            warnings.warn(f"{len(failed)} of {len(ok)} instructions had no valid expansion after "
                          f"{int(self.cfg.retries)} retries and were passed on unchanged (first: "
                          f"{prompts[failed[0]]!r})", stacklevel=2)
            for i in failed:
                results[i] = prompts[i]
        return results


def make_expander(model: GPT2, params: dict[str, Any], tokenizer, expand: ml_collections.ConfigDict, reader=None,
                  *, validate: bool = True) -> Expander:
    """An Expander from an LM run's param groups ({"lm"}, plus {"adapter", "bert"} with a BERT `reader`)."""
    read = None if reader is None else reader.bind({"adapter": params["adapter"], "bert": params["bert"]})
    return Expander(model, params["lm"], tokenizer, expand, validate=validate, instruction_prefix=read)


def load_expander(workdir: str, *, validate: bool | None = None) -> Expander:
    """The prompt expander of a language-model workdir (trained with `llmimg train` on an `lm` config).
    A BERT-reading one takes BERT's tokenizer and config from WORKDIR/bert and its weights from the checkpoint."""
    import os

    from llmimg_jax.config import load_workdir_config
    from llmimg_jax.data.tokenizer import load_tokenizer
    from llmimg_jax.text.bert_prefix import load_reader, uses_bert
    from llmimg_jax.text.lm_task import build_lm
    from llmimg_jax.training.checkpoint import load_params

    config = load_workdir_config(workdir)
    if config.task != "lm":
        raise UserError(f"'{workdir}' holds a '{config.task}' run, not a language model; pass the workdir of an "
                        "`llmimg train --config configs/shapes_lm.py` run")
    tokenizer = load_tokenizer(config.text.tokenizer_dir or os.path.join(workdir, "tokenizer"))
    model = build_lm(config, len(tokenizer))
    ids = jax.ShapeDtypeStruct((1, int(config.lm.max_length)), np.int32)
    reader = load_reader(config, workdir, model.config) if uses_bert(config) else None
    abstract = {"lm": jax.eval_shape(model.init, jax.random.key(0), ids)["params"]}
    if reader is not None:
        abstract.update(jax.eval_shape(reader.init, jax.random.key(0)))
    restored = load_params(workdir, abstract)
    params = restored["params"]
    if config.expand.use_ema:
        params = {**params, **restored["ema"]}  # the EMA of the trained groups; the frozen BERT as it is
    if validate is None:
        validate = config.data.source == "shapes"
    return make_expander(model, params, tokenizer, config.expand, reader, validate=validate)

