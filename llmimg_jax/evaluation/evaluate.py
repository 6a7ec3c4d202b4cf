"""`llmimg eval`: a generator workdir measured on its validation data.

On the Shapes world: alignment (GenEval-style, per instruction kind and attribute) on held-out instructions,
drawn from the instruction itself and, when a prompt expander is available, from its expansion; a Fréchet
distance between generated and real validation images on the Shapes probe's features, next to a real-vs-real
baseline at the same count (the distance is biased at small N); sample diversity; plots; `report.md` /
`report.json`. On any other data set (alignment is Shapes-only): the Fréchet distance and feature diversity with
a feature extractor the user names (`features`, see `features.py`), images drawn from the validation captions.
With `features` on Shapes data, the user's Fréchet distance comes next to the probe's. With a captioner
(`captioner_workdir`, or the one a quickstart workdir trained): its captioning accuracy, and the round trip and
edit accuracy through this generator (`captioning.captioner_scores`).
"""

from __future__ import annotations

import logging
import os
import time
import types
from typing import Callable

import numpy as np

from llmimg_jax.config import load_workdir_config
from llmimg_jax.errors import UserError
from llmimg_jax.evaluation.alignment import make_eval_examples, score_images
from llmimg_jax.evaluation.diversity import diversity, feature_diversity
from llmimg_jax.evaluation.features import extract_features, load_feature_extractor
from llmimg_jax.evaluation.frechet import frechet_distance_from_features
from llmimg_jax.evaluation.grid import save_grid
from llmimg_jax.evaluation.plots import accuracy_bar_chart, loss_curve
from llmimg_jax.evaluation.report import write_report
from llmimg_jax.pipeline import TextToImagePipeline
from llmimg_jax.safety import NO_BLOCKLIST

log = logging.getLogger(__name__)

DIVERSITY_PROMPTS, DIVERSITY_IMAGES = 10, 4


def _generator_config(workdir: str):
    """The generator's config, read before any model loads (a quickstart workdir names its generator run)."""
    from llmimg_jax.quickstart import resolve_workdirs

    if not os.path.isdir(workdir):
        raise UserError(f"workdir '{workdir}' does not exist; pass the --workdir of a training run")
    return load_workdir_config(resolve_workdirs(workdir)[0])


def _quickstart_captioner(workdir: str) -> str | None:
    from llmimg_jax.quickstart import resolve_captioner

    return resolve_captioner(workdir)


def _real_examples(config, num: int, *, need_baseline: bool) -> tuple[np.ndarray, list[str]]:
    """The first 2 * num validation images (uint8) and captions: num to compare with, num for the real-vs-real
    baseline. Fewer than num is an error; fewer than 2 * num too when `need_baseline`, else the baseline is
    skipped with a warning."""
    from llmimg_jax.data.sources import make_source

    source = make_source(config.data, config.data.eval_split)
    if len(source) < (2 * num if need_baseline else num):
        need = "the Fréchet distance and its baseline need" if need_baseline else "the Fréchet distance needs"
        raise UserError(f"{need} {2 * num if need_baseline else num} validation images but the split has "
                        f"{len(source)}; lower --num")
    if len(source) < 2 * num:
        log.warning("skipped the real-vs-real Fréchet baseline: it needs %d validation images, the split has %d",
                    2 * num, len(source))
    examples = [source[i] for i in range(min(2 * num, len(source)))]
    return np.stack([e["image"] for e in examples]), [e["text"] for e in examples]


def _frechet(features: Callable[[np.ndarray], np.ndarray], generated: dict[str, np.ndarray], real: np.ndarray,
             num: int, label: str = "") -> dict[str, float]:
    """Generated vs the first num real images per condition, and the real-vs-real baseline when there is one."""
    reference = features(real[:num])
    out = {f"generated ({name}) vs real{label}": frechet_distance_from_features(features(images), reference)
           for name, images in generated.items()}
    if len(real) >= 2 * num:
        out[f"real vs real (baseline, same N){label}"] = frechet_distance_from_features(features(real[num:]),
                                                                                          reference)
    return out


def _captioner(captioner, captioner_workdir: str, pipe: TextToImagePipeline, num: int, seed: int,
               options: dict) -> dict:
    """The report's captioner section; the edit accuracy needs an expander trained on edits, else it is skipped."""
    from llmimg_jax.evaluation.captioning import captioner_scores
    from llmimg_jax.text.edit_format import trained_on_edits

    data_config = load_workdir_config(captioner_workdir).data  # its own image size; the generator may differ
    edits = bool(pipe.lm_workdir) and trained_on_edits(load_workdir_config(pipe.lm_workdir))
    scores = captioner_scores(captioner, pipe, data_config, min(num, 500), seed, edits=edits, **options)
    if not edits:
        scores["edit_skipped"] = ("skipped: the prompt expander was not trained on edits; train one with "
                                  "configs/shapes_lm.py:edits and pass --lm-workdir")
        log.warning("skipped the edit accuracy: the prompt expander was not trained on edits (lm.edit_fraction=0)")
    return {"workdir": captioner_workdir, **scores}


def evaluate_workdir(workdir: str, *, lm_workdir: str | None = None, num: int = 300, seed: int = 0,
                     out_dir: str | None = None, expand: bool | None = None, features: str | None = None,
                     captioner_workdir: str | None = None, best_of: int = 1, **options) -> dict:
    """Evaluates the generator of `workdir`; writes `out_dir` (default `workdir/eval`) and returns the results.
    `features`: `MODULE:FUNCTION` or `file.py:FUNCTION` (needed unless the data set is the Shapes world).
    `best_of` > 1: each condition is measured twice, on one image per prompt and on the probe's pick of
    `best_of` (`rerank.py`); diversity and the sample grid use the picks."""
    start = time.time()
    if num < 2 or best_of < 1:
        raise UserError(f"--num must be at least 2 and --best-of at least 1, got {num} and {best_of}")
    config = _generator_config(workdir)
    shapes = config.data.source == "shapes"
    captioner_workdir = captioner_workdir or _quickstart_captioner(workdir)
    captioner = None
    if captioner_workdir:
        if not shapes:
            raise UserError("the captioner is measured on the Shapes world only; drop --captioner-workdir")
        from llmimg_jax.text.captioner_task import load_captioner

        captioner = load_captioner(captioner_workdir)  # loaded (and checked) before anything is generated
    if not shapes and not features:
        raise UserError(f"this generator was trained on data.source='{config.data.source}': alignment is measured "
                        "on the Shapes world only, and the Fréchet distance needs a feature extractor: pass "
                        "--features MODULE:FUNCTION (f(images uint8 [N, S, S, 3]) -> features [N, D])")
    extractor = load_feature_extractor(features) if features else None
    # Read before any sampling, so a too-large --num fails at once.
    real, captions = _real_examples(config, num, need_baseline=shapes)
    # Evaluation draws held-out instructions or the data set's own captions, not the user's prompts: no filter.
    pipe = TextToImagePipeline.from_workdir(workdir, lm_workdir=lm_workdir, blocklist=NO_BLOCKLIST)
    if best_of > 1:
        pipe.reranker  # loads the probe, or refuses a generator not trained on Shapes, before anything is drawn
    out_dir = out_dir or os.path.join(workdir, "eval")
    expand = bool(pipe.lm_workdir) if expand is None else expand
    if shapes:
        pairs = [(kind, text) for kind, text, _ in make_eval_examples(num, seed)]
        prompts = [text for _, text in pairs]
    else:
        prompts = captions[:num]  # each generated image has a real counterpart drawn from the same caption

    conditions = {"without expansion": prompts}
    if expand:
        conditions["with expansion"] = pipe.expand(prompts, seed=seed)
    generated = {}
    for name, texts in list(conditions.items()):
        drawn = pipe.generate_arrays(texts, seed=seed, num_images=best_of, **options)
        if best_of == 1:
            generated[name] = drawn
            continue
        # The first of each prompt's candidates is a plain sample: both figures from one set of images.
        drawn = drawn.reshape(len(texts), best_of, *drawn.shape[1:])
        generated[name] = drawn[:, 0]
        generated[f"{name}, best of {best_of}"] = pipe.choose(drawn, texts)
        conditions[f"{name}, best of {best_of}"] = texts
    best = "with expansion" if expand else "without expansion"
    best = f"{best}, best of {best_of}" if best_of > 1 else best
    groups_prompts = conditions[best][:DIVERSITY_PROMPTS]
    groups = pipe.generate_arrays(groups_prompts, seed=seed + 1, num_images=DIVERSITY_IMAGES, best_of=best_of,
                                  **options)
    groups = list(groups.reshape(len(groups_prompts), DIVERSITY_IMAGES, *groups.shape[1:]))

    def user_features(images: np.ndarray) -> np.ndarray:
        return extract_features(extractor, images, f"--features '{features}'")

    frechet, plots = {}, []
    os.makedirs(out_dir, exist_ok=True)
    if shapes:
        from llmimg_jax.evaluation.probe import load_or_train_probe

        alignment = {name: score_images(images, pairs) for name, images in generated.items()}
        probe = load_or_train_probe(image_size=pipe.generator.image_size)
        frechet.update(_frechet(probe.features, generated, real, num))
        sample_diversity = diversity(groups, probe)
        plots.append(accuracy_bar_chart([alignment[n]["per_kind"] for n in alignment],
                                        os.path.join(out_dir, "accuracy_per_kind.png"), labels=tuple(alignment)))
    else:
        sample_diversity = {"feature_distance": feature_diversity(types.SimpleNamespace(features=user_features),
                                                                  groups)}
    if extractor is not None:
        frechet.update(_frechet(user_features, generated, real, num, label=f" (features {features})"))

    metrics = os.path.join(pipe.generator.workdir, "metrics.jsonl")
    if os.path.isfile(metrics):
        plots.append(loss_curve(metrics, os.path.join(out_dir, "loss.png")))
    shown = min(16, num)
    plots.append(save_grid(generated[best][:shown], conditions[best][:shown],
                           os.path.join(out_dir, "eval_samples.png")))
    captioner_scores = _captioner(captioner, captioner_workdir, pipe, num, seed, options) if captioner else None
    results = {
        "title": f"Evaluation of {os.path.basename(os.path.abspath(workdir))} ({pipe.generator.kind})",
        "settings": {"workdir": pipe.generator.workdir, "step": pipe.generator.step, "data": config.data.source,
                     ("instructions" if shapes else "captions"): num, "seed": seed,
                     "expander": pipe.lm_workdir or "none", "features": features or "Shapes probe",
                     "best_of": best_of, **options, "seconds": round(time.time() - start, 1)},
        "frechet": frechet,
        "diversity": {best: sample_diversity},
        "plots": [os.path.relpath(p, out_dir) for p in plots],
    }
    if captioner_scores:
        results["captioner"] = captioner_scores
    if shapes:
        results["alignment"] = alignment
    else:
        results["settings"]["alignment"] = f"not measured: Shapes world only (data.source='{config.data.source}')"
    write_report(results, out_dir)
    return results
