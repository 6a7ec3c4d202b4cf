"""`llmimg data build|export`: build the configured data set; export Shapes images with their ground truth."""

from __future__ import annotations

import argparse

from llmimg_jax.config import apply_overrides, base_config, load_config


def register(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser("data", help="build or export data sets")
    sub = p.add_subparsers(dest="data_command", metavar="ACTION", required=True)

    build = sub.add_parser("build", help="build the data set a config names (idempotent)")
    build.add_argument("--config", required=True, help="configs/NAME.py or configs/NAME.py:VARIANT")
    build.set_defaults(run=run_build, takes_overrides=True)

    export = sub.add_parser("export", help="write Shapes images as PNGs with descriptions and ground truth")
    export.add_argument("--split", default="validation", choices=("train", "validation", "test"))
    export.add_argument("--num", type=int, default=200, help="number of examples to write")
    export.add_argument("--size", type=int, default=32, help="image side S (32 or 64)")
    export.add_argument("--config", help="take data settings (data_dir, sizes, seed) from this config")
    export.add_argument("--out", required=True, help="output folder")
    export.set_defaults(run=run_export, takes_overrides=True)


def _data_config(args: argparse.Namespace):
    config = load_config(args.config) if args.config else base_config()
    apply_overrides(config, args.overrides)
    return config.data


def run_build(args: argparse.Namespace) -> None:
    from llmimg_jax.data.sources import make_source

    data = _data_config(args)
    for split in (data.train_split, data.eval_split):
        source = make_source(data, split)
        print(f"{data.source} {split}: {len(source)} examples")


def run_export(args: argparse.Namespace) -> None:
    from llmimg_jax.data.export import export_split
    from llmimg_jax.data.sources import make_source
    from llmimg_jax.errors import UserError

    data = _data_config(args)
    if data.source != "shapes":
        raise UserError(f"data export writes the Shapes world only (data.source is '{data.source}')")
    if args.num <= 0:
        raise UserError(f"--num must be positive, got {args.num}")
    data.image_size = args.size
    source = make_source(data, args.split)
    if args.num > len(source):
        raise UserError(f"--num {args.num} exceeds the {len(source)} examples of split '{args.split}'")
    export_split(source, args.out, args.num)
    print(f"wrote {args.num} {args.split} examples (S={args.size}) to {args.out}")
