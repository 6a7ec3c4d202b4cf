"""Prompt-expander accuracy on unseen wordings: hand-written paraphrases vs the spec's own templates.

    python scripts/eval_paraphrases.py --lm-workdir W_GPT2 --lm-workdir W_BERT --num 500

For each workdir (an `llmimg train --config configs/shapes_lm.py[:bert]` run) the expander writes one greedy
expansion per instruction (first attempt only: no validation, no retries, no fall-back). With `--retries N` it
expands as `llmimg expand` and `generate --expand` do: an expansion that fails the expander's check is resampled up
to N times (the expander's own config says 4). That check reads a spec instruction in full, a paraphrase only in
part (its colour, shape, size and background words, and how many objects it introduces; a paraphrase that no
attempt passes keeps its first valid description). An expansion counts when it parses as a Shapes description
and its scene satisfies the instruction's constraint:
  paraphrases   data/shapes/paraphrases.py (`--per-template` of each template of each kind); the constraint each
                one means comes with it
  spec          `--num` validation instructions in the spec's templates (as `llmimg expand --eval` draws them),
                the constraint parsed from the text
An instruction longer than a GPT-2-reading model's context (its tokenizer, trained on Shapes texts, spells unseen
words in many pieces) cannot be read: it counts as a failure, and the table says how many there were.
With `--generator-workdir G`, each expansion is also drawn by G (one image, `--seed`) and the image is read back
(the project's Shapes checker) and scored against the same constraint: a second table, images per kind.
Prints one markdown table, a row per workdir, per kind and overall; `--out` also writes the failures (JSON).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from typing import Sequence

import numpy as np

from llmimg_jax.data.shapes.constraints import KINDS, Instruction, parse_instruction, satisfies
from llmimg_jax.data.shapes.grammar import parse_description
from llmimg_jax.data.shapes.paraphrases import paraphrase_set
from llmimg_jax.data.shapes.spec import ShapesError
from llmimg_jax.errors import UserError
from llmimg_jax.evaluation.alignment import make_eval_set
from llmimg_jax.text.expander import Expander, load_expander
from llmimg_jax.text.prompt_format import prompt_ids

BATCH = 100  # instructions per expansion call


def follows(description: str, instruction: Instruction) -> tuple[bool, bool]:
    """(valid description, valid and satisfies the instruction)."""
    try:
        scene = parse_description(description)
    except ShapesError:
        return False, False
    return True, satisfies(scene, instruction)


def fits(expander: Expander, text: str) -> bool:
    """Whether the model can read the instruction (a BERT reader truncates, with a warning, instead)."""
    if expander.instruction_prefix is not None:
        return True
    return len(prompt_ids(expander.tokenizer, text)) < expander.model.config.n_positions


def expansions(expander: Expander, texts: Sequence[str], seed: int, retries: int) -> list[str | None]:
    """The expansion of each text (the first greedy one, or with `retries` > 0 the expander's checked one, up to
    that many resamples); None for a text too long for the model to read."""
    expander.validate = retries > 0
    expander.cfg.retries = retries
    readable = [i for i, t in enumerate(texts) if fits(expander, t)]
    out: list[str | None] = [None] * len(texts)
    for start in range(0, len(readable), BATCH):
        chunk = readable[start:start + BATCH]
        for i, text in zip(chunk, expander.expand_with_status([texts[i] for i in chunk], seed=seed + start)[0]):
            out[i] = text
    return out


def image_score(pipe, items: Sequence[tuple[str, str, Instruction]], expansions: Sequence[str | None],
                seed: int, **options) -> dict:
    """Draws each expansion with `pipe` (a TextToImagePipeline) and checks the image against the constraint; an
    instruction without an expansion (too long to read) fails."""
    from llmimg_jax.data.shapes.reader import read_image

    drawable = [i for i, e in enumerate(expansions) if e is not None]
    images = pipe.generate_arrays([expansions[i] for i in drawable], seed=seed, **options) if drawable else []
    good = [False] * len(items)
    for i, image in zip(drawable, images):
        try:
            good[i] = satisfies(read_image(image), items[i][2])
        except ShapesError:  # 0 or more than 3 objects: not a Shapes scene, wrong
            pass
    per_kind: dict[str, list[bool]] = {}
    for (kind, _, _), ok in zip(items, good):
        per_kind.setdefault(kind, []).append(ok)
    return {"num": len(items), "overall": float(np.mean(good)),
            "per_kind": {k: float(np.mean(v)) for k, v in per_kind.items()}}


def score(expander: Expander, items: Sequence[tuple[str, str, Instruction]], seed: int, pipe=None,
          retries: int = 0, **options) -> dict:
    """items: (kind, text, constraint) -> per-kind and overall accuracy, valid rate and failures (and with `pipe`,
    the images' scores under "images")."""
    expanded = expansions(expander, [text for _, text, _ in items], seed, retries)
    per_kind: dict[str, list[bool]] = {}
    valid, failures = [], []
    for (kind, text, instruction), expansion in zip(items, expanded):
        is_valid, good = (False, False) if expansion is None else follows(expansion, instruction)
        per_kind.setdefault(kind, []).append(good)
        valid.append(is_valid)
        if not good:
            failures.append({"kind": kind, "instruction": text, "expansion": expansion, "valid": is_valid})
    out = {"num": len(items), "too_long": sum(e is None for e in expanded),
           "overall": float(np.mean([g for v in per_kind.values() for g in v])), "valid": float(np.mean(valid)),
           "per_kind": {k: float(np.mean(v)) for k, v in per_kind.items()}, "failures": failures}
    if pipe is not None:
        out["images"] = image_score(pipe, items, expanded, seed, **options)
    return out


def evaluate(workdir: str, num: int, per_template: int, seed: int, pipe=None, retries: int = 0,
             **options) -> dict:
    from llmimg_jax.config import load_workdir_config
    from llmimg_jax.training.checkpoint import latest_step

    config = load_workdir_config(workdir)
    expander = load_expander(workdir, validate=False)
    paraphrases = [(p.kind, p.text, p.instruction) for p in paraphrase_set(per_template, seed)]
    spec = [(kind, text, parse_instruction(text)) for kind, text in make_eval_set(num, seed)]
    return {"workdir": workdir, "encoder": config.lm.get("instruction_encoder", "gpt2"), "retries": retries,
            "step": latest_step(workdir), "paraphrase": score(expander, paraphrases, seed, pipe, retries, **options),
            "spec": score(expander, spec, seed, pipe, retries, **options)}


def table(results: Sequence[dict], images: bool = False) -> str:
    """Expansions (or, with `images`, the drawn images) per kind and overall, a row per workdir."""
    kinds = [k.replace("row/column", "row/col") for k in KINDS]
    head = ["workdir", "encoder", "step"] + [f"{s} {k}" for s in ("para", "spec") for k in kinds + ["all"]]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for r in results:
        name = os.path.basename(os.path.normpath(r["workdir"]))
        name += f" ({r['retries']} retries)" if r.get("retries") else ""
        cells = [name, r["encoder"], str(r["step"])]
        for part in ("paraphrase", "spec"):
            s = r[part]["images"] if images else r[part]
            cells += [f"{s['per_kind'].get(k, float('nan')):.3f}" for k in KINDS]
            long = f", {s['too_long']} too long" if s.get("too_long") else ""
            valid = f", valid {s['valid']:.2f}" if "valid" in s else ""
            cells.append(f"**{s['overall']:.3f}** (n={s['num']}{valid}{long})")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--lm-workdir", action="append", required=True, help="a prompt-expander workdir (repeatable)")
    p.add_argument("--num", type=int, default=500, help="spec-template validation instructions")
    p.add_argument("--per-template", type=int, default=2, help="paraphrases per hand-written template")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--retries", type=int, default=0,
                   help="expand with the expander's check and up to this many resamples, as `llmimg expand` does")
    p.add_argument("--generator-workdir", help="also draw every expansion with this generator and score the images")
    p.add_argument("--steps", type=int, help="sampling steps (diffusion generator)")
    p.add_argument("--sampler", help="ddpm, ddim or dpm++2m (diffusion generator)")
    p.add_argument("--out", help="write the results, failures included, to this JSON file")
    args = p.parse_args(argv)
    options = {k: getattr(args, k) for k in ("steps", "sampler") if getattr(args, k) is not None}
    try:
        pipe = None
        if args.generator_workdir:
            from llmimg_jax.pipeline import TextToImagePipeline
            from llmimg_jax.safety import NO_BLOCKLIST

            pipe = TextToImagePipeline.from_workdir(args.generator_workdir, blocklist=NO_BLOCKLIST)
        results = [evaluate(w, args.num, args.per_template, args.seed, pipe, args.retries, **options)
                   for w in args.lm_workdir]
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print("Expansions that satisfy their instruction:\n")
    print(table(results))
    if pipe is not None:
        print(f"\nImages drawn from the expansions by {args.generator_workdir} that satisfy their instruction:\n")
        print(table(results, images=True))
    if args.out:
        with open(args.out, "w") as f:
            json.dump(results, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
