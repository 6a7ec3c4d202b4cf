"""`llmimg expand` (the prompt expander) and `llmimg lm import-hf` (bring a local Hugging Face GPT-2)."""

from __future__ import annotations

import argparse

from llmimg_jax.cli.prompts import (add_blocklist_argument, add_prompt_arguments, load_prompt_blocklist,
                                    read_prompts, write_lines)


def register(commands: argparse._SubParsersAction) -> None:
    expand = commands.add_parser("expand", help="rewrite instructions into complete descriptions with the LM",
                                 description="Expand each instruction with a trained prompt-expander LM.")
    expand.add_argument("--workdir", required=True, help="workdir of a language-model run")
    add_prompt_arguments(expand)
    add_blocklist_argument(expand)
    expand.add_argument("--out", help="write one description per line to this file instead of printing")
    expand.add_argument("--seed", type=int, default=0)
    expand.add_argument("--eval", type=int, metavar="N",
                        help="instead of expanding prompts, score N Shapes validation instructions (per kind), and "
                             "for an expander trained on edits one edit of each of N validation scenes")
    expand.set_defaults(run=run_expand)

    lm = commands.add_parser("lm", help="language-model utilities")
    sub = lm.add_subparsers(dest="lm_command", metavar="ACTION", required=True)
    imp = sub.add_parser("import-hf", help="import a local Hugging Face GPT-2 directory (no hub, no torch)")
    imp.add_argument("directory", help="folder with config.json and model.safetensors (and tokenizer files)")
    imp.add_argument("--out", required=True, help="new workdir for the imported model")
    imp.set_defaults(run=run_import_hf)


def run_expand(args: argparse.Namespace) -> None:
    from llmimg_jax.text.expander import load_expander

    if args.eval:
        return _evaluate(args)
    prompts = read_prompts(args)
    blocklist = load_prompt_blocklist(args, prompts)
    expander = load_expander(args.workdir)
    descriptions = expander.expand(prompts, seed=args.seed)
    blocklist.check(prompts, expansions=descriptions)
    write_lines(descriptions, args.out, "descriptions")


def run_import_hf(args: argparse.Namespace) -> None:
    from llmimg_jax.text.hf_gpt2 import import_hf_to_workdir

    path = import_hf_to_workdir(args.directory, args.out)
    print(f"imported {args.directory} into {path}")


def _evaluate(args: argparse.Namespace) -> None:
    """Scores instructions; an expander trained on edits (`lm.edit_fraction` > 0) is also scored on one edit of
    each of the first N validation scenes."""
    import json

    from llmimg_jax.config import load_workdir_config
    from llmimg_jax.evaluation.captioning import validation_examples
    from llmimg_jax.evaluation.expansion import edit_expansion_accuracy, expansion_accuracy
    from llmimg_jax.text.edit_format import trained_on_edits
    from llmimg_jax.text.expander import load_expander

    expander = load_expander(args.workdir, validate=True)
    result = expansion_accuracy(expander, args.eval, seed=args.seed)
    print("| kind | valid and satisfied |\n| --- | --- |")
    for kind, value in result["per_kind"].items():
        print(f"| {kind} | {value:.3f} |")
    print(f"| **overall** ({result['num']}) | **{result['overall']:.3f}** |\nvalid descriptions: {result['valid']:.3f}")
    config = load_workdir_config(args.workdir)
    if trained_on_edits(config):
        edits = edit_expansion_accuracy(expander, validation_examples(config.data, args.eval)[1], seed=args.seed)
        print("\n| edit | applied exactly |\n| --- | --- |")
        for form, value in edits["per_form"].items():
            print(f"| {form} | {value:.3f} |")
        print(f"| **overall** ({edits['num']}) | **{edits['overall']:.3f}** |")
        result["edits"] = edits
    if args.out:
        with open(args.out, "w") as f:
            json.dump(result, f, indent=2)
