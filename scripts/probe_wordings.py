"""What a pretrained sentence encoder already knows of the paraphrase set's wordings, before any training.

    python scripts/probe_wordings.py [--encoder-path DIR]        # default: the shipped all-MiniLM-L6-v2

Each hand-written wording of a cell, a relation or a line (data/shapes/paraphrases.py) is put in a carrier
sentence ("a small red square {cell}", "a red circle {relation} a blue square", "three red circles {line}") and
compared, by the encoder's mean-pooled cosine similarity, with the same sentence in each of the spec's wordings.
The nearest spec wording should be the one it means; the margin is the similarity to that one minus the best
wrong one (negative when wrong). An expander reading instructions through the encoder learns only the spec's
wordings in training, so it can take "upper-right corner" for "top right" only as far as the encoder already
relates them: this is that prior. Prints a table, a row per wording, and how many are right per group.
"""

from __future__ import annotations

import argparse
import sys
from typing import Callable, Sequence

import jax.numpy as jnp
import numpy as np

from llmimg_jax.data.shapes.constraints import LINE_PHRASES, RELATION_PHRASES
from llmimg_jax.data.shapes.paraphrases import CELL_WORDS, LINE_WORDS, RELATION_WORDS
from llmimg_jax.data.shapes.spec import cell_phrase
from llmimg_jax.errors import UserError
from llmimg_jax.text.bert import load_bert_tokenizer, load_hf_bert, mean_pool
from llmimg_jax.text.pretrained import minilm_dir

def groups() -> dict[str, tuple[str, dict[str, Sequence[str]], dict[str, Sequence[str]]]]:
    """group -> (carrier sentence with {}, {meaning: spec wordings}, {meaning: hand-written wordings}); the spec's
    wordings are the ones the training instructions are written in."""
    cells = {f"{r},{c}": (cell_phrase(r, c),) for r, c in sorted(CELL_WORDS)}
    return {"cell": ("a small red square {}", cells, {f"{r},{c}": (w,) for (r, c), w in CELL_WORDS.items()}),
            "relation": ("a red circle {} a blue square", {r: (p,) for r, p in RELATION_PHRASES.items()},
                         RELATION_WORDS),
            "line": ("three red circles {}", LINE_PHRASES, LINE_WORDS)}


def embedder(path: str, length: int = 32) -> Callable[[Sequence[str]], np.ndarray]:
    """texts -> unit mean-pooled states [N, D] of the BERT in `path`."""
    model, params = load_hf_bert(path)
    tokenizer = load_bert_tokenizer(path)

    def embed(texts: Sequence[str]) -> np.ndarray:
        enc = tokenizer(list(texts), padding="max_length", max_length=length, truncation=True, return_tensors="np")
        states = model.apply({"params": params}, jnp.asarray(enc["input_ids"]), jnp.asarray(enc["attention_mask"]))
        pooled = np.asarray(mean_pool(states, jnp.asarray(enc["attention_mask"])), np.float64)
        return pooled / np.linalg.norm(pooled, axis=1, keepdims=True)

    return embed


def probe(embed: Callable[[Sequence[str]], np.ndarray]) -> list[dict]:
    """A row per hand-written wording: group, wording, meaning, nearest spec wording, margin (a meaning with several
    spec wordings counts its nearest)."""
    rows = []
    for group, (carrier, spec, written) in groups().items():
        targets = [(meaning, w) for meaning, ws in spec.items() for w in ws]
        target_states = embed([carrier.format(w) for _, w in targets])
        for meaning, wordings in written.items():
            sims = embed([carrier.format(w) for w in wordings]) @ target_states.T
            for wording, sim in zip(wordings, sims):
                right = max(s for (m, _), s in zip(targets, sim) if m == meaning)
                wrong = max(s for (m, _), s in zip(targets, sim) if m != meaning)
                rows.append({"group": group, "wording": wording, "means": " / ".join(spec[meaning]),
                             "nearest": targets[int(np.argmax(sim))][1], "margin": float(right - wrong)})
    return rows


def table(rows: Sequence[dict]) -> str:
    lines = ["| group | wording | means | nearest spec wording | margin |", "| --- | --- | --- | --- | --- |"]
    lines += [f"| {r['group']} | {r['wording']} | {r['means']} | {r['nearest']}{'' if r['margin'] > 0 else ' ✗'} "
              f"| {r['margin']:+.4f} |" for r in rows]
    counts = {}
    for r in rows:
        counts.setdefault(r["group"], []).append(r["margin"] > 0)
    summary = ", ".join(f"{g} {sum(v)}/{len(v)}" for g, v in counts.items())
    return "\n".join(lines) + f"\n\nnearest spec wording right: {summary}"


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--encoder-path", help="a local Hugging Face BERT directory (default: the shipped MiniLM)")
    args = p.parse_args(argv)
    try:
        print(table(probe(embedder(args.encoder_path or minilm_dir()))))
    except UserError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
