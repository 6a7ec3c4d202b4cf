"""The evaluation report: `report.json` (everything, machine-readable) and `report.md` (tables to read).

`results` keys, all optional:
  title       str
  settings    {name: value}                      e.g. workdir, checkpoint step, number of images, seed
  alignment   {condition: score_images(...)}     e.g. {"without expansion": ..., "with expansion": ...}
  frechet     {name: float} or float             Fréchet distances in probe feature space
  diversity   {condition: {metric: float}}       `diversity.diversity` per condition
  captioner   `captioning.captioner_scores(...)` plus {"workdir": str}
  plots       [png path]                          relative to out_dir (or absolute), shown as images
Other keys go to report.json only.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any, Mapping

import numpy as np

from llmimg_jax.data.shapes.constraints import KINDS
from llmimg_jax.evaluation.alignment import ATTRIBUTES


def _plain(value: Any) -> Any:
    """JSON-ready copy: numpy scalars and arrays to Python, non-finite floats to None."""
    if isinstance(value, Mapping):
        return {str(k): _plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple, np.ndarray)):
        return [_plain(v) for v in (value.tolist() if isinstance(value, np.ndarray) else value)]
    if isinstance(value, (np.generic,)):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.4g}"
    return str(value)


def _pct(value: float | None) -> str:
    return "–" if value is None else f"{100 * value:.1f} %"


def _table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + " --- |" * len(header)] + \
        ["| " + " | ".join(row) + " |" for row in rows] + [""]


def _alignment_section(alignment: Mapping[str, Mapping]) -> list[str]:
    names = list(alignment)
    lines = ["## Alignment (Shapes reader)", ""]
    header = ["kind"] + names
    rows = []
    for kind in KINDS:
        if any(kind in a.get("per_kind", {}) for a in alignment.values()):
            rows.append([kind] + [f"{_pct(a['per_kind'].get(kind))} ({a.get('per_kind_num', {}).get(kind, 0)})"
                                  for a in alignment.values()])
    rows.append(["**overall**"] + [f"**{_pct(a.get('accuracy'))}** ({a.get('num', 0)})" for a in alignment.values()])
    lines += _table(header, rows)
    rows = [[attr] + [_pct(a.get("per_attribute", {}).get(attr)) for a in alignment.values()]
            for attr in ATTRIBUTES if any(attr in a.get("per_attribute", {}) for a in alignment.values())]
    if rows:
        lines += ["Per attribute (each check on the instructions that name it):", ""]
        lines += _table(["attribute"] + names, rows)
    unreadable = [f"{name}: {a['unreadable']}" for name, a in alignment.items() if a.get("unreadable")]
    if unreadable:
        lines += ["Images the reader could not read (no object or more than 3), scored wrong: "
                  f"{', '.join(unreadable)}.", ""]
    return lines


def _captioner_section(scores: Mapping[str, Any]) -> list[str]:
    lines = [f"## Captioner ({scores.get('workdir', '')}, {scores.get('num', 0)} validation images)", ""]
    rows = [["captioning exact match", _pct(scores.get("caption_exact"))],
            ["descriptions that parse", _pct(scores.get("caption_valid"))]]
    rows += [[f"captioning: {attr}", _pct(value)] for attr, value in (scores.get("per_attribute") or {}).items()]
    rows.append(["round trip (image -> description -> image satisfies the original scene)",
                 _pct(scores.get("round_trip"))])
    rows.append(["edits (image -> description + edit -> expander -> image satisfies the edited scene)",
                 _pct(scores["edit"]) if "edit" in scores else scores.get("edit_skipped", "–")])
    return lines + _table(["measure", "value"], rows)


def write_report(results: Mapping[str, Any], out_dir: str) -> str:
    """Writes `out_dir/report.json` and `out_dir/report.md`; returns the markdown file's path."""
    os.makedirs(out_dir, exist_ok=True)
    plain = _plain(results)
    with open(os.path.join(out_dir, "report.json"), "w") as f:
        json.dump(plain, f, indent=2)
        f.write("\n")

    lines = [f"# {plain.get('title') or 'Evaluation report'}", ""]
    if plain.get("settings"):
        lines += _table(["setting", "value"], [[k, _fmt(v)] for k, v in plain["settings"].items()])
    if plain.get("alignment"):
        lines += _alignment_section(plain["alignment"])
    if plain.get("captioner"):
        lines += _captioner_section(plain["captioner"])
    frechet = plain.get("frechet")
    if frechet is not None:
        frechet = frechet if isinstance(frechet, Mapping) else {"probe features": frechet}
        lines += ["## Fréchet distance (lower is closer to real images)", ""]
        lines += _table(["images", "distance"], [[k, _fmt(v)] for k, v in frechet.items()])
    if plain.get("diversity"):
        diversity = plain["diversity"]
        metrics = list(dict.fromkeys(m for d in diversity.values() for m in d))
        lines += ["## Diversity (several images per prompt; higher is more varied)", ""]
        rows = [[c] + [_fmt(d.get(m)) for m in metrics] for c, d in diversity.items()]
        lines += _table(["condition"] + metrics, rows)
    for png in plain.get("plots") or []:
        rel = os.path.relpath(png, out_dir) if os.path.isabs(png) else png
        lines += [f"![{os.path.splitext(os.path.basename(png))[0]}]({rel})", ""]
    lines += ["All numbers, and per-image results, are in [report.json](report.json).", ""]
    path = os.path.join(out_dir, "report.md")
    with open(path, "w") as f:
        f.write("\n".join(lines))
    return path
