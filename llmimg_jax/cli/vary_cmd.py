"""`llmimg vary`: describe an image with a captioner, optionally edit the description through the prompt
expander, and redraw it with a generator (image -> M_LLM -> G)."""

from __future__ import annotations

import argparse
import os


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "vary", help="redraw an image from its description (optionally edited)",
        description="Writes DIR/0.png, 1.png, ... and DIR/description.txt (the text the generator drew from).")
    p.add_argument("--workdir", required=True, help="workdir of a diffusion or GAN run (the generator)")
    p.add_argument("--captioner-workdir", required=True, help="workdir of a captioner run")
    p.add_argument("image", help="the image to vary (PNG, JPEG, ...)")
    p.add_argument("--out", required=True, help="output folder")
    p.add_argument("--num-images", type=int, default=4)
    p.add_argument("--edit", help='an edit such as "make the circle blue" (applied through the prompt expander)')
    p.add_argument("--lm-workdir", help="the prompt expander's workdir (default: the generator's text LM)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--guidance", type=float, help="classifier-free guidance scale (diffusion)")
    p.add_argument("--steps", type=int, help="sampling steps (diffusion)")
    p.add_argument("--sampler", help="ddpm, ddim or dpm++2m (diffusion)")
    p.add_argument("--truncation", type=float, help="noise truncation (GAN)")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> None:
    from llmimg_jax.cli.describe_cmd import read_images
    from llmimg_jax.errors import UserError
    from llmimg_jax.pipeline import TextToImagePipeline
    from llmimg_jax.text.captioner_task import image_size, load_captioner
    from llmimg_jax.text.edit_format import edit_prompt

    if args.num_images < 1:
        raise UserError(f"--num-images must be at least 1, got {args.num_images}")
    if args.edit is not None and not args.edit.strip():
        raise UserError("--edit is empty; pass an edit such as \"make the circle blue\"")
    image = read_images([args.image], image_size(args.captioner_workdir))
    description = load_captioner(args.captioner_workdir).describe(image)[0]
    pipe = TextToImagePipeline.from_workdir(args.workdir, lm_workdir=args.lm_workdir)
    text = description
    if args.edit:
        text = pipe.expand([edit_prompt(description, args.edit)], seed=args.seed)[0]
    options = {k: getattr(args, k) for k in ("guidance", "steps", "sampler", "truncation")
               if getattr(args, k) is not None}
    out = pipe([text], seed=args.seed, num_images=args.num_images, **options)
    os.makedirs(args.out, exist_ok=True)
    for i, im in enumerate(out.images):
        im.save(os.path.join(args.out, f"{i}.png"))
    with open(os.path.join(args.out, "description.txt"), "w", encoding="utf-8") as f:
        f.write(f"{description}\n" + (f"{args.edit} -> {text}\n" if args.edit else ""))
    print(f"described: {description}")
    if args.edit:
        print(f"edited:    {text}")
    print(f"wrote {len(out.images)} images to {args.out}")
