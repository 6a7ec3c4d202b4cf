"""Reading prompts from the command line or a prompts file, with one-line errors for bad input; the blocklist;
writing the resulting lines to `--out FILE` or printing them."""

from __future__ import annotations

import argparse
import os

from llmimg_jax.errors import UserError
from llmimg_jax.safety import Blocklist, load_blocklist


def add_prompt_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("prompts", nargs="*", help="one or more prompts (quote each)")
    parser.add_argument("--prompts-file", help="a UTF-8 text file with one prompt per line")


def read_prompts(args: argparse.Namespace) -> list[str]:
    """Prompts from the arguments or `--prompts-file` (not both); empty prompts are errors."""
    if args.prompts and args.prompts_file:
        raise UserError("give prompts as arguments or with --prompts-file, not both")
    if args.prompts_file:
        try:
            with open(args.prompts_file, encoding="utf-8") as f:
                lines = f.read().splitlines()
        except FileNotFoundError:
            raise UserError(f"prompts file '{args.prompts_file}' not found; check the path") from None
        except UnicodeDecodeError as e:
            raise UserError(f"prompts file '{args.prompts_file}' is not UTF-8 text (byte {e.start}); "
                            "save it as UTF-8") from None
        prompts = [line.strip() for line in lines]
        empty = [i + 1 for i, p in enumerate(prompts) if not p]
        if empty:
            raise UserError(f"prompts file '{args.prompts_file}' has an empty prompt on line {empty[0]}; "
                            "remove empty lines")
    else:
        prompts = [p.strip() for p in args.prompts]
        if not prompts:
            raise UserError("no prompt given; pass a prompt in quotes or --prompts-file FILE")
        if any(not p for p in prompts):
            raise UserError("a prompt is empty; pass a non-empty prompt in quotes")
    if not prompts:
        raise UserError(f"prompts file '{args.prompts_file}' is empty; write one prompt per line")
    return prompts


def add_blocklist_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--blocklist", metavar="FILE",
                        help="more blocked terms, one per line ('#' comments), added to the default list; prompts "
                             "(and expansions) containing one are refused")


def load_prompt_blocklist(args: argparse.Namespace, prompts: list[str]) -> Blocklist:
    """The default blocklist plus `--blocklist FILE`; refuses blocked prompts at once (before any model loads)."""
    blocklist = load_blocklist(args.blocklist)
    blocklist.check(prompts)
    return blocklist


def write_lines(lines: list[str], out: str | None, what: str) -> None:
    """Writes one line per item to `out` (creating its folder) and says how many `what` it wrote, or prints them."""
    if out:
        os.makedirs(os.path.dirname(os.path.abspath(out)), exist_ok=True)
        with open(out, "w", encoding="utf-8") as f:
            f.write("\n".join(lines) + "\n")
        print(f"wrote {len(lines)} {what} to {out}")
    else:
        print("\n".join(lines))
