"""`llmimg eval`: a generator workdir measured on the Shapes world.

Alignment (GenEval-style, per instruction kind and attribute) on held-out instructions, drawn from the
instruction itself and, when a prompt expander is available, from its expansion; a Fréchet distance between
generated and real validation images on the Shapes probe's features, next to a real-vs-real baseline at the same
count (the distance is biased at small N); sample diversity; plots; `report.md` / `report.json`.
"""

from __future__ import annotations

import os
import time

import numpy as np

from llmimg_jax.errors import UserError
from llmimg_jax.evaluation.alignment import make_eval_examples, score_images
from llmimg_jax.evaluation.diversity import diversity
from llmimg_jax.evaluation.frechet import frechet_distance_from_features
from llmimg_jax.evaluation.grid import save_grid
from llmimg_jax.evaluation.plots import accuracy_bar_chart, loss_curve
from llmimg_jax.evaluation.report import write_report
from llmimg_jax.pipeline import TextToImagePipeline

DIVERSITY_PROMPTS, DIVERSITY_IMAGES = 10, 4


def _real_images(config, num: int) -> np.ndarray:
    """The first `num` validation images (uint8)."""
    from llmimg_jax.data.sources import make_source

    source = make_source(config.data, config.data.eval_split)
    if num > len(source):
        raise UserError(f"the Fréchet baseline needs {num} validation images but the split has "
                        f"{len(source)}; lower --num")
    return np.stack([source[i]["image"] for i in range(num)])


def evaluate_workdir(workdir: str, *, lm_workdir: str | None = None, num: int = 300, seed: int = 0,
                     out_dir: str | None = None, expand: bool | None = None, **options) -> dict:
    """Evaluates the generator of `workdir`; writes `out_dir` (default `workdir/eval`) and returns the results."""
    start = time.time()
    pipe = TextToImagePipeline.from_workdir(workdir, lm_workdir=lm_workdir)
    config = pipe.generator.config
    if config.data.source != "shapes":
        raise UserError("llmimg eval measures alignment on the Shapes world; this workdir was trained on "
                        f"data.source='{config.data.source}'")
    if num < 2:
        raise UserError(f"--num must be at least 2, got {num}")
    # Two disjoint real sets (generated vs real, and the real-vs-real baseline), read before any sampling so a
    # too-large --num fails at once.
    real = _real_images(config, 2 * num)
    real_a, real_b = real[:num], real[num:]
    out_dir = out_dir or os.path.join(workdir, "eval")
    expand = bool(pipe.lm_workdir) if expand is None else expand
    examples = make_eval_examples(num, seed)
    pairs = [(kind, text) for kind, text, _ in examples]
    prompts = [text for _, text in pairs]

    conditions = {"without expansion": prompts}
    if expand:
        conditions["with expansion"] = pipe.expand(prompts, seed=seed)
    alignment, generated = {}, {}
    for name, texts in conditions.items():
        generated[name] = pipe.generate_arrays(texts, seed=seed, **options)
        alignment[name] = score_images(generated[name], pairs)
    best = "with expansion" if expand else "without expansion"

    from llmimg_jax.evaluation.probe import load_or_train_probe

    probe = load_or_train_probe(image_size=pipe.generator.image_size)
    features_a = probe.features(real_a)
    frechet = {f"generated ({name}) vs real": frechet_distance_from_features(probe.features(images), features_a)
               for name, images in generated.items()}
    frechet["real vs real (baseline, same N)"] = frechet_distance_from_features(probe.features(real_b), features_a)

    groups_prompts = conditions[best][:DIVERSITY_PROMPTS]
    groups = pipe.generate_arrays(groups_prompts, seed=seed + 1, num_images=DIVERSITY_IMAGES, **options)
    groups = list(groups.reshape(len(groups_prompts), DIVERSITY_IMAGES, *groups.shape[1:]))

    os.makedirs(out_dir, exist_ok=True)
    plots = [accuracy_bar_chart([alignment[n]["per_kind"] for n in alignment],
                                os.path.join(out_dir, "accuracy_per_kind.png"), labels=tuple(alignment))]
    metrics = os.path.join(pipe.generator.workdir, "metrics.jsonl")
    if os.path.isfile(metrics):
        plots.append(loss_curve(metrics, os.path.join(out_dir, "loss.png")))
    shown = min(16, num)
    plots.append(save_grid(generated[best][:shown], conditions[best][:shown],
                           os.path.join(out_dir, "eval_samples.png")))
    results = {
        "title": f"Evaluation of {os.path.basename(os.path.abspath(workdir))} ({pipe.generator.kind})",
        "settings": {"workdir": pipe.generator.workdir, "step": pipe.generator.step, "instructions": num, "seed": seed,
                     "expander": pipe.lm_workdir or "none", **options,
                     "seconds": round(time.time() - start, 1)},
        "alignment": alignment,
        "frechet": frechet,
        "diversity": {best: diversity(groups, probe)},
        "plots": [os.path.relpath(p, out_dir) for p in plots],
    }
    write_report(results, out_dir)
    return results
