"""`llmimg`: the command line. Each sub-command lives in its own module and registers itself here."""

from __future__ import annotations

import argparse
import sys
from typing import Sequence

from llmimg_jax.errors import UserError


def build_parser() -> argparse.ArgumentParser:
    from llmimg_jax.cli import (data_cmd, describe_cmd, eval_cmd, generate_cmd, lm_cmd, quickstart_cmd, train_cmd,
                                vary_cmd)

    parser = argparse.ArgumentParser(
        prog="llmimg",
        description="Language-model-driven text-to-image generation in JAX/Flax.",
    )
    parser.add_argument("--debug", action="store_true", help="show full tracebacks for errors")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for module in (quickstart_cmd, data_cmd, train_cmd, lm_cmd, describe_cmd, vary_cmd, generate_cmd,
                   eval_cmd):
        module.register(commands)
    return parser


def main(argv: Sequence[str] | None = None, *, device_per_core: bool = False) -> int:
    """Runs one command; `device_per_core`: first split the CPU into one JAX device per core (the `llmimg`
    program does; a caller whose process already uses JAX cannot)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in argv
    try:
        if device_per_core:
            from llmimg_jax.training.cpu_devices import set_cpu_devices

            set_cpu_devices()
        parser = build_parser()
        # `--config.a.b=value` overrides are collected by the commands that take a config.
        args, extra = parser.parse_known_args(argv)
        overrides = [a for a in extra if a.startswith("--config.")]
        unknown = [a for a in extra if not a.startswith("--config.")]
        if unknown:
            parser.error(f"unrecognized arguments: {' '.join(unknown)}")
        if overrides and not getattr(args, "takes_overrides", False):
            parser.error(f"'{args.command}' takes no --config.* overrides")
        args.overrides = [o.removeprefix("--config.") for o in overrides]
        result = args.run(args)
        return int(result or 0)
    except UserError as e:
        if debug:
            raise
        print(f"llmimg: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("llmimg: interrupted", file=sys.stderr)
        return 130


def console() -> int:
    """The `llmimg` program."""
    return main(device_per_core=True)


if __name__ == "__main__":
    sys.exit(console())
