"""The prompt filter: refuse instructions (and their expansions) that contain a blocked term.

Terms come from the small default list shipped with the package (`data/blocklist.txt`) plus, optionally, a
user's file in the same format: one term per line, `#` starts a comment. A term matches as whole words,
case-insensitively; a term of several words matches them separated by any whitespace.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Sequence

from llmimg_jax.errors import UserError

DEFAULT_BLOCKLIST = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "blocklist.txt")


def read_terms(path: str) -> list[str]:
    """The terms of a blocklist file, lower-cased, in file order; a missing or unreadable file is a UserError."""
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise UserError(f"blocklist file '{path}' not found; check the path of --blocklist") from None
    except UnicodeDecodeError as e:
        raise UserError(f"blocklist file '{path}' is not UTF-8 text (byte {e.start}); save it as UTF-8") from None
    terms = [" ".join(line.partition("#")[0].split()).lower() for line in lines]
    terms = [t for t in terms if t]
    if not terms:
        raise UserError(f"blocklist file '{path}' has no terms; write one term per line ('#' starts a comment)")
    return terms


@dataclasses.dataclass(frozen=True)
class Blocklist:
    """Blocked terms and where they came from (named in the refusal, so the user knows what to edit)."""
    terms: tuple[str, ...]
    source: str = "blocklist"

    def __post_init__(self):
        words = (r"\s+".join(re.escape(w) for w in t.split()) for t in self.terms)
        # Longest first, so a term that contains a shorter one is the one reported.
        pattern = "|".join(sorted(words, key=len, reverse=True))
        object.__setattr__(self, "_regex", re.compile(rf"(?<!\w)(?:{pattern})(?!\w)", re.IGNORECASE)
                           if self.terms else None)

    def find(self, text: str) -> str | None:
        """The first blocked term in `text` (as the list spells it), or None."""
        match = self._regex.search(text) if self._regex is not None else None
        return " ".join(match.group(0).split()).lower() if match else None

    def check(self, prompts: Sequence[str], *, expansions: Sequence[str] | None = None) -> None:
        """UserError naming the first blocked term in `prompts`, or in `expansions` (the prompts' rewrites)."""
        texts = prompts if expansions is None else expansions
        for i, text in enumerate(texts):
            term = self.find(text)
            if term is None:
                continue
            where = f"prompt {i + 1}" if len(texts) > 1 else "the prompt"
            if expansions is None:
                raise UserError(f"{where} contains the blocked term '{term}' ({self.source}); remove it from the "
                                "prompt")
            raise UserError(f"the expansion of {where} contains the blocked term '{term}' ({self.source}); "
                            f"rephrase the prompt or draw it without --expand (expansion: {text[:80]!r})")


def load_blocklist(path: str | None = None, *, default: bool = True) -> Blocklist:
    """The default list plus the terms of `path` (when given); `default=False` uses `path` alone."""
    terms, sources = [], []
    if default:
        terms += read_terms(DEFAULT_BLOCKLIST)
        sources.append("default blocklist")
    if path:
        terms += read_terms(path)
        sources.append(f"blocklist {path}")
    return Blocklist(tuple(dict.fromkeys(terms)), " + ".join(sources) or "empty blocklist")


NO_BLOCKLIST = Blocklist(())
