"""`llmimg generate`: draw images for prompts with a trained generator (diffusion or GAN)."""

from __future__ import annotations

import argparse
import os

from llmimg_jax.cli.prompts import add_blocklist_argument, add_prompt_arguments, load_prompt_blocklist, read_prompts
from llmimg_jax.errors import UserError


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "generate", help="draw images for prompts",
        description="One prompt: --out FILE.png. Several prompts or --prompts-file: --out DIR gets 00000.png, ... "
        "one per prompt in order (00000_0.png, 00000_1.png, ... with --num-images). --grid: one captioned grid PNG.")
    p.add_argument("--workdir", required=True, help="workdir of a diffusion or GAN run")
    add_prompt_arguments(p)
    p.add_argument("--out", required=True, help="output PNG (one prompt, or --grid) or folder")
    p.add_argument("--expand", action="store_true", help="rewrite each prompt with the LM prompt expander first")
    p.add_argument("--lm-workdir", help="the prompt expander's workdir (default: the generator's text LM)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--num-images", type=int, default=1, help="images per prompt")
    p.add_argument("--grid", action="store_true", help="write one grid PNG with captions")
    p.add_argument("--best-of", type=int, default=1, metavar="N",
                   help="draw N images for each one written and keep the one the Shapes probe ranks first "
                        "(Shapes generators)")
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale (diffusion)")
    p.add_argument("--steps", type=int, help="sampling steps (diffusion)")
    p.add_argument("--sampler", help="ddpm, ddim or dpm++2m (diffusion)")
    p.add_argument("--eta", type=float, help="DDIM eta (diffusion)")
    p.add_argument("--truncation", type=float, help="noise truncation (GAN)")
    p.add_argument("--postprocess", action="store_true",
                   help="remove isolated noise pixels and widen a low contrast (off by default)")
    add_blocklist_argument(p)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from llmimg_jax.evaluation.grid import save_grid
    from llmimg_jax.pipeline import TextToImagePipeline

    prompts = read_prompts(args)
    blocklist = load_prompt_blocklist(args, prompts)
    to_folder = bool(args.prompts_file) or len(prompts) > 1
    if not args.grid and not to_folder and args.num_images == 1 and not args.out.lower().endswith(".png"):
        raise UserError(f"--out '{args.out}' should be a .png file for one prompt (or pass --grid)")
    options = {k: getattr(args, k) for k in ("guidance", "steps", "sampler", "eta", "truncation")
               if getattr(args, k) is not None}
    pipe = TextToImagePipeline.from_workdir(args.workdir, lm_workdir=args.lm_workdir, blocklist=blocklist)
    out = pipe(prompts, expand=args.expand, seed=args.seed, num_images=args.num_images, best_of=args.best_of,
               postprocess=args.postprocess, **options)
    drawn = out.expansions or prompts
    if args.grid:
        captions = [text for text in drawn for _ in range(args.num_images)]
        path = save_grid([im for im in out.images], captions, args.out)
        print(f"wrote a grid of {len(out.images)} images to {path}")
        return
    if not to_folder and args.num_images == 1:
        os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
        out.images[0].save(args.out)
        print(f"wrote {args.out}" + (f" ({drawn[0]})" if out.expansions else ""))
        return
    os.makedirs(args.out, exist_ok=True)
    for i, image in enumerate(out.images):
        prompt_index, j = divmod(i, args.num_images)
        name = f"{prompt_index:05d}.png" if args.num_images == 1 else f"{prompt_index:05d}_{j}.png"
        image.save(os.path.join(args.out, name))
    with open(os.path.join(args.out, "prompts.txt"), "w", encoding="utf-8") as f:
        f.write("\n".join(drawn) + "\n")
    print(f"wrote {len(out.images)} images to {args.out}")
