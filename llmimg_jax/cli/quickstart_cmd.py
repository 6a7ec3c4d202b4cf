"""`llmimg quickstart`: data, language model, generator, samples and report in one command."""

from __future__ import annotations

import argparse


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "quickstart", help="build the Shapes data, train the LM and a generator, draw samples, evaluate",
        description="Runs the whole pipeline on the embedded default into WORKDIR; re-running resumes.")
    p.add_argument("--workdir", required=True)
    p.add_argument("--generator", default="diffusion", choices=("diffusion", "gan"))
    p.add_argument("--num-eval", type=int, default=150, help="held-out instructions in the report")
    p.add_argument("--best-of", type=int, default=1, metavar="N",
                   help="samples and report: also the Shapes probe's pick of N images per instruction (about a "
                        "minute more for N=4)")
    p.add_argument("--captioner", action="store_true",
                   help="also train the image -> description captioner and measure it (about 10 more minutes)")
    p.add_argument("--minutes", type=float, default=20.0,
                   help="time budget (without --captioner): the generator trains for what the other phases leave, "
                        "its step count fitted to the machine's speed (default 20)")
    p.add_argument("--tiny", action="store_true", help="the configs' tiny variants (a smoke test, not a model)")
    p.add_argument("--lm-override", action="append", default=[], metavar="KEY=VALUE",
                   help="override the language model's config (repeatable), e.g. train.steps=1500")
    p.add_argument("--generator-override", action="append", default=[], metavar="KEY=VALUE",
                   help="override the generator's config (repeatable)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from llmimg_jax.quickstart import run_quickstart

    run_quickstart(args.workdir, generator=args.generator, tiny=args.tiny, num_eval=args.num_eval,
                   lm_overrides=args.lm_override, generator_overrides=args.generator_override, captioner=args.captioner,
                   best_of=args.best_of, minutes=args.minutes)
