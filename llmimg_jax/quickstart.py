"""`llmimg quickstart`: the whole system on the embedded default, in one workdir.

    W/lm/          the prompt-expander GPT-2 (configs/shapes_lm.py:quickstart)
    W/generator/   the text-to-image generator (configs/shapes_diffusion.py:quickstart or shapes_gan.py:quickstart),
                   encoding text with W/lm
    W/captioner/   with --captioner: the image -> description model (configs/shapes_captioner.py:quickstart), measured
                   in the report (captioning, round trip); it adds about 10 minutes on 2 CPU cores
    W/samples.png  instructions, their expansions and the images drawn from them
    W/report.md, W/report.json, W/*.png   the evaluation (`llmimg eval`)

A phase whose run already reached its step count is not redone, so re-running resumes where it stopped.
`llmimg generate --workdir W` and `llmimg eval --workdir W` use W's generator and its language model.
"""

from __future__ import annotations

import json
import math
import os
import time
import warnings
from typing import Sequence

from llmimg_jax.config import apply_overrides, load_config, save_config
from llmimg_jax.errors import UserError

QUICKSTART_FILE = "quickstart.json"
# Minutes kept for the samples and the evaluation after the generator: on 2 CPU cores they take 1.5-2.5 minutes (plus
# about a minute for each doubling of --best-of).
FINAL_PHASES_MINUTES = 3.0
CONFIGS = {"lm": "shapes_lm.py", "diffusion": "shapes_diffusion.py", "gan": "shapes_gan.py",
           "captioner": "shapes_captioner.py"}


def configs_dir() -> str:
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "configs")
    if not os.path.isdir(path):
        raise UserError(f"the configs folder '{path}' is missing; run quickstart from a clone of the repository "
                        "(pip install -e .)")
    return path


def resolve_workdirs(workdir: str) -> tuple[str, str | None]:
    """(generator workdir, LM workdir or None) of a quickstart workdir or of a plain generator workdir."""
    marker = os.path.join(workdir, QUICKSTART_FILE)
    if not os.path.isfile(marker):
        return workdir, None
    with open(marker) as f:
        layout = json.load(f)
    return os.path.join(workdir, layout["generator"]), os.path.join(workdir, layout["lm"])


def resolve_captioner(workdir: str) -> str | None:
    """The captioner a quickstart workdir trained (`--captioner`), or None."""
    marker = os.path.join(workdir, QUICKSTART_FILE)
    if not os.path.isfile(marker):
        return None
    with open(marker) as f:
        name = json.load(f).get("captioner")
    return os.path.join(workdir, name) if name else None


def _phase_config(name: str, variant: str, overrides: Sequence[str]):
    """The phase's config file at its `quickstart` (about 20 minutes in all on 2 CPU cores) or `tiny` variant."""
    return apply_overrides(load_config(os.path.join(configs_dir(), CONFIGS[name]) + f":{variant}"), overrides)


def _train(config, workdir: str) -> None:
    from llmimg_jax.config import load_workdir_config
    from llmimg_jax.training.checkpoint import latest_step
    from llmimg_jax.training.main import train_main

    done = latest_step(workdir) if os.path.isdir(workdir) else None
    steps = int(config.train.steps)
    if done is not None and float(config.train.time_limit_minutes) > 0:
        steps = min(steps, int(load_workdir_config(workdir).train.steps))  # the count its time limit fitted
    if done is not None and done >= steps:
        print(f"  already trained to step {done}; skipped (delete {workdir} to redo)", flush=True)
        return
    save_config(config, workdir)
    train_main(config, workdir)


def _generator_minutes(minutes: float, start: float, best_of: int) -> float:
    """What the budget leaves the generator: `minutes` less the time spent so far and the final phases' share."""
    final = FINAL_PHASES_MINUTES + math.log2(best_of)
    left = minutes - (time.time() - start) / 60 - final
    if left < 1.0:
        warnings.warn(f"the {minutes:g}-minute budget leaves the generator {left:.1f} minutes; it trains for 1 "
                      "(raise --minutes)", stacklevel=2)
    return round(max(left, 1.0), 2)


def run_quickstart(workdir: str, *, generator: str = "diffusion", tiny: bool = False, num_eval: int = 150,
                   lm_overrides: Sequence[str] = (), generator_overrides: Sequence[str] = (),
                   captioner: bool = False, best_of: int = 1, minutes: float = 20.0) -> dict:
    """Builds the data, trains the LM and the generator, draws the sample grid and writes the report. `best_of`:
    the samples and the report also show the Shapes probe's pick of that many images per instruction
    (evaluation/rerank.py). `minutes`: the time budget (without the captioner): the generator trains for what
    the other phases leave of it, its step count fitted to the machine (`train.time_limit_minutes`)."""
    if generator not in ("diffusion", "gan"):
        raise UserError(f"--generator must be diffusion or gan, got '{generator}'")
    start = time.time()
    if best_of < 1:
        raise UserError(f"--best-of must be at least 1, got {best_of}")
    if minutes <= 0:
        raise UserError(f"--minutes must be positive, got {minutes:g}")
    variant = "tiny" if tiny else "quickstart"
    lm_dir, gen_dir = os.path.join(workdir, "lm"), os.path.join(workdir, "generator")
    cap_dir = os.path.join(workdir, "captioner")
    os.makedirs(workdir, exist_ok=True)
    layout = {"lm": "lm", "generator": "generator", "generator_kind": generator}
    if captioner or resolve_captioner(workdir):  # a re-run without the flag keeps a captioner already there
        layout["captioner"] = "captioner"
    with open(os.path.join(workdir, QUICKSTART_FILE), "w") as f:
        json.dump(layout, f)
    phases = 6 if "captioner" in layout else 5

    lm_config = _phase_config("lm", variant, lm_overrides)
    gen_config = _phase_config(generator, variant, [f"text.lm_workdir={lm_dir}", *generator_overrides])

    print(f"[1/{phases}] data: the Shapes world", flush=True)
    from llmimg_jax.data.sources import make_source

    for split in (lm_config.data.train_split, lm_config.data.eval_split):
        print(f"  {split}: {len(make_source(lm_config.data, split))} examples", flush=True)
    print(f"[2/{phases}] tokenizer and prompt-expander language model ({lm_config.train.steps} steps) -> {lm_dir}",
          flush=True)
    _train(lm_config, lm_dir)
    if not tiny and not any(o.startswith("train.time_limit_minutes=") for o in generator_overrides):
        gen_config.train.time_limit_minutes = _generator_minutes(minutes, start, best_of)
    limit = float(gen_config.train.time_limit_minutes)
    budget = f"at most {gen_config.train.steps} steps in {limit:.1f} minutes" if limit > 0 else \
        f"{gen_config.train.steps} steps"
    print(f"[3/{phases}] {generator} generator ({budget}) -> {gen_dir}", flush=True)
    _train(gen_config, gen_dir)
    if "captioner" in layout:
        cap_config = _phase_config("captioner", variant, ())
        print(f"[4/{phases}] captioner: image -> description ({cap_config.train.steps} steps) -> {cap_dir}",
              flush=True)
        _train(cap_config, cap_dir)

    print(f"[{phases - 1}/{phases}] samples: instructions -> expansions -> images", flush=True)
    from llmimg_jax.evaluation.alignment import make_eval_set
    from llmimg_jax.evaluation.grid import save_grid
    from llmimg_jax.pipeline import TextToImagePipeline

    pipe = TextToImagePipeline.from_workdir(gen_dir, lm_workdir=lm_dir)
    instructions = [text for _, text in make_eval_set(8, seed=1)]
    out = pipe(instructions, expand=True, seed=1, best_of=best_of)
    captions = [f"{i}  ->  {e}" for i, e in zip(instructions, out.expansions)]
    samples = save_grid([im for im in out.images], captions, os.path.join(workdir, "samples.png"))

    print(f"[{phases}/{phases}] evaluation on {num_eval} held-out instructions", flush=True)
    from llmimg_jax.evaluation.evaluate import evaluate_workdir

    results = evaluate_workdir(gen_dir, lm_workdir=lm_dir, num=num_eval, seed=0, out_dir=workdir,
                               captioner_workdir=cap_dir if "captioner" in layout else None, best_of=best_of)
    minutes = (time.time() - start) / 60
    files = {"samples": samples, "report": os.path.join(workdir, "report.md"),
             "report_json": os.path.join(workdir, "report.json"),
             "tensorboard": [os.path.join(lm_dir, "tb"), os.path.join(gen_dir, "tb")]}
    print(f"\ndone in {minutes:.1f} minutes")
    for name, scores in results["alignment"].items():
        print(f"  alignment {name}: {scores['accuracy']:.1%}")
    if "captioner" in results:
        print(f"  captioner: exact match {results['captioner']['caption_exact']:.1%}, "
              f"round trip {results['captioner']['round_trip']:.1%}")
    print(f"  samples:     {files['samples']}\n  report:      {files['report']} (and report.json)\n"
          f"  tensorboard: tensorboard --logdir {workdir}\n"
          f"  next:        llmimg generate --workdir {workdir} --expand \"a red circle to the left of a blue square\" "
          f"--out x.png")
    return {"results": results, "files": files, "minutes": minutes}
