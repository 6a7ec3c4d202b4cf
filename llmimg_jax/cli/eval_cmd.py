"""`llmimg eval`: measure a generator workdir (Shapes: alignment, Fréchet distance, diversity; other data sets:
the Fréchet distance with a user's feature extractor)."""

from __future__ import annotations

import argparse
import os


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("eval", help="measure a generator: alignment per kind, Fréchet distance, diversity",
                            description="Writes WORKDIR/eval/report.md, report.json and plots. Alignment is "
                            "measured on the Shapes world only; for other data sets pass --features.")
    p.add_argument("--workdir", required=True, help="workdir of a diffusion or GAN run")
    p.add_argument("--lm-workdir", help="prompt expander (default: the generator's text LM, if it has one)")
    p.add_argument("--num", type=int, default=300,
                   help="held-out instructions, balanced over the kinds (other data sets: validation captions)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="report folder (default WORKDIR/eval)")
    p.add_argument("--no-expand", action="store_true", help="score only the instructions as given")
    p.add_argument("--features", metavar="MODULE:FUNCTION",
                   help="feature extractor for the Fréchet distance, MODULE:FUNCTION or file.py:FUNCTION, "
                        "f(images uint8 [N, S, S, 3]) -> [N, D]; needed unless the data set is the Shapes world")
    p.add_argument("--captioner-workdir", help="also measure this captioner: captioning, round trip and edits "
                   "through the generator (default: the one a quickstart workdir trained with --captioner)")
    p.add_argument("--best-of", type=int, default=1, metavar="N",
                   help="also measure the Shapes probe's pick of N images per instruction (next to one image)")
    p.add_argument("--steps", type=int, help="sampling steps (diffusion)")
    p.add_argument("--guidance", type=float, help="guidance scale (diffusion)")
    p.add_argument("--sampler", help="ddpm, ddim or dpm++2m (diffusion)")
    p.add_argument("--truncation", type=float, help="noise truncation (GAN)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from llmimg_jax.evaluation.evaluate import evaluate_workdir

    options = {k: getattr(args, k) for k in ("steps", "guidance", "sampler", "truncation")
               if getattr(args, k) is not None}
    results = evaluate_workdir(args.workdir, lm_workdir=args.lm_workdir, num=args.num, seed=args.seed,
                               out_dir=args.out, expand=False if args.no_expand else None, features=args.features,
                               captioner_workdir=args.captioner_workdir, best_of=args.best_of, **options)
    for name, scores in results.get("alignment", {}).items():
        kinds = ", ".join(f"{k} {v:.3f}" for k, v in scores["per_kind"].items())
        print(f"alignment {name}: {scores['accuracy']:.3f} ({kinds})")
    if "alignment" not in results:
        print(f"alignment: {results['settings']['alignment']}")
    if "captioner" in results:
        c = results["captioner"]
        edit = f"{c['edit']:.3f}" if "edit" in c else "skipped (expander not trained on edits)"
        print(f"captioner: exact match {c['caption_exact']:.3f}, round trip {c['round_trip']:.3f}, edits {edit}")
    for name, value in results["frechet"].items():
        print(f"Fréchet distance, {name}: {value:.4g}")
    print(f"report: {os.path.join(args.out or os.path.join(args.workdir, 'eval'), 'report.md')}")
