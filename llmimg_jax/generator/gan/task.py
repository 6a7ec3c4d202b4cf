"""The GAN task: a text-conditional generator and projection discriminator trained through the shared runtime.

Groups: `g` (generator, with EMA), `d` (discriminator), `d_spectral` (D's spectral-norm vectors: frozen, replaced
each step through the runtime's "updates" metric, so they are checkpointed and resume exactly) and `text` (the
GPT-2 text encoder: frozen, or trained with G when `text.trainable=True`).

One train step runs two phases: D (hinge + matching-aware term + optional contrastive losses + strided R1), then G
(hinge + optional contrastive losses) against the D just updated. Both see DiffAugment-ed images. D reads the text
through `stop_gradient`: the text encoder belongs to the generator's side, so the G loss cannot raise D's
score by moving D's text input instead of improving the images.
"""

from __future__ import annotations


import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from llmimg_jax.data.pipeline import Pipeline
from llmimg_jax.data.shapes.grammar import swap_background, swap_colour
from llmimg_jax.data.sources import make_source
from llmimg_jax.errors import UserError
from llmimg_jax.generator.diffusion.task import image_and_tokens
from llmimg_jax.generator.gan import losses
from llmimg_jax.generator.gan.augment import augment
from llmimg_jax.generator.gan.discriminator import Discriminator, discriminator_config
from llmimg_jax.generator.gan.generate import GANGenerator, build_generator
from llmimg_jax.generator.gan.generator import Generator
from llmimg_jax.generator.sample_hook import sample_grid_hook
from llmimg_jax.generator.text_side import TextSide, build_text_side
from llmimg_jax.presets import preset_overrides
from llmimg_jax.text.lm_task import corpus
from llmimg_jax.training.task import Phase, Task


def default_gan_config() -> ml_collections.ConfigDict:
    return ml_collections.ConfigDict(dict(
        # presets plus overrides; 0 or () keeps the preset's value (z_dim comes from the generator preset)
        generator=dict(preset="32", z_dim=0, style_dim=0, channels=(), attn_resolutions=(), num_heads=0,
                       head_dim=0),
        discriminator=dict(preset="32", channels=(), embed_dim=0),
        spectral_norm=True,       # on the discriminator
        r1_gamma=0.1,             # R1 weight on real images; 0: off
        r1_every=4,               # R1 on every N-th real image of each batch (1/N of its cost)
        mismatch_weight=1.0,      # matching-aware term: real images with another example's caption are fake
        contrastive_weight=0.0,   # image-text InfoNCE in D and G (XMC-GAN); 0: off
        word_region_weight=0.0,   # word-region InfoNCE in D and G (XMC-GAN; D reads the token states); 0: off
        hard_negative_weight=0.0,  # D: a real image with one word of its caption swapped is fake; 0: off
        hard_negatives="background",  # which words: "background", "colour" or "background,colour"
        hard_negative_start=0,    # the step from which the hard-negative term counts (once G draws the objects)
        saturation_weight=0.0,    # G: penalty on tanh inputs beyond +-saturation_bound (tanh's flat tail); 0: off
        saturation_bound=3.0,
        temperature=0.1,          # of both contrastive losses
        augment=True,             # DiffAugment (caption-safe) on real and fake images
        d_lr=0.0,                 # discriminator learning rate; 0: train.lr
        b1=0.0,                   # Adam betas of both players (GANs train best with little momentum)
        b2=0.99,
        truncation=1.0,           # at sampling time; 1: off
        use_ema=True,             # sample with the EMA generator
        num_samples=8,            # images in each periodic sample grid
    ))


def build_discriminator(config: ml_collections.ConfigDict) -> Discriminator:
    """The discriminator of a config: `gan.discriminator.preset` with overrides, at `data.image_size`."""
    section, gan = config.gan.discriminator, config.gan
    cfg = discriminator_config(section.preset, **{**preset_overrides(section), "spectral_norm": bool(gan.spectral_norm),
                                                  "image_size": int(config.data.image_size)})
    return Discriminator(cfg, dtype=jnp.dtype(config.train.compute_dtype))


def uses_word_region(gan: ml_collections.ConfigDict) -> bool:
    """Whether D has the word-region projections (workdirs written before the option have none)."""
    return float(gan.get("word_region_weight", 0.0)) > 0


def _check(gan: ml_collections.ConfigDict) -> None:
    if int(gan.r1_every) < 1:
        raise UserError(f"gan.r1_every={gan.r1_every} must be >= 1 (R1 on every N-th real image); set "
                        f"gan.r1_gamma=0 to turn R1 off")
    non_negative = ("r1_gamma", "mismatch_weight", "contrastive_weight", "word_region_weight",
                    "hard_negative_weight", "hard_negative_start", "saturation_weight")
    for name in non_negative:
        if float(gan.get(name, 0)) < 0:
            raise UserError(f"gan.{name}={gan[name]} must be >= 0 (0 turns the term off or starts it at once)")
    if float(gan.get("saturation_weight", 0)) and float(gan.get("saturation_bound", 3.0)) <= 0:
        raise UserError(f"gan.saturation_bound={gan.saturation_bound} must be > 0 (tanh inputs beyond it are "
                        f"penalised; 3 keeps pixels within 0.005 of +-1)")
    if (float(gan.contrastive_weight) or float(gan.word_region_weight)) and float(gan.temperature) <= 0:
        raise UserError(f"gan.temperature={gan.temperature} must be > 0 when a contrastive weight is set")
    unknown = set(hard_negative_kinds(gan)) - set(HARD_NEGATIVES)
    if unknown or not hard_negative_kinds(gan):
        raise UserError(f"gan.hard_negatives={gan.get('hard_negatives')!r} names {sorted(unknown) or 'nothing'}; "
                        f"use a comma-separated choice of {', '.join(HARD_NEGATIVES)}")


# A real image with its caption changed by one of these is a mismatch (rng picks which object, and its new colour).
HARD_NEGATIVES = {"background": lambda text, rng: swap_background(text), "colour": swap_colour}


def hard_negative_kinds(gan: ml_collections.ConfigDict) -> list[str]:
    return [k.strip() for k in str(gan.get("hard_negatives", "background")).split(",") if k.strip()]


def make_init(generator: Generator, discriminator: Discriminator, text: TextSide, size: int, word_region: bool):
    """init(rng) -> {"g", "d", "text"[, "d_spectral"]}: the GAN's parameter groups (boxed, logically named);
    `word_region`: D also gets the word-region projections."""
    def init(rng):
        g_rng, d_rng, t_rng = jax.random.split(rng, 3)
        width, length = text.model.config.n_embd, text.max_length
        pooled, tokens = jnp.zeros((1, width)), jnp.zeros((1, length, width))
        mask = jnp.ones((1, length), bool)
        g_params = generator.init(g_rng, jnp.zeros((1, generator.config.z_dim)), pooled, tokens, mask)
        d_tokens = dict(tokens=tokens, token_mask=mask) if word_region else {}
        d_vars = discriminator.init(d_rng, jnp.zeros((1, size, size, 3)), pooled, pooled, **d_tokens)
        groups = {"g": g_params["params"], "d": d_vars["params"], "text": text.init(t_rng)}
        if "spectral" in d_vars:
            groups["d_spectral"] = d_vars["spectral"]
        return groups
    return init


def make_task(config: ml_collections.ConfigDict, workdir: str) -> Task:
    gan = config.gan
    _check(gan)
    source = make_source(config.data, config.data.train_split)
    text = build_text_side(config, workdir, lambda: corpus(source))
    generator, discriminator = build_generator(config), build_discriminator(config)
    size, z_dim = int(config.data.image_size), generator.config.z_dim
    sampler = GANGenerator(generator, text, gan, size)
    hard_weight = float(gan.get("hard_negative_weight", 0.0))
    hard_start = int(gan.get("hard_negative_start", 0))
    saturation_weight = float(gan.get("saturation_weight", 0.0))
    saturation_bound = float(gan.get("saturation_bound", 3.0))
    swaps = [HARD_NEGATIVES[k] for k in hard_negative_kinds(gan)]
    base_preprocess = image_and_tokens(text)

    def preprocess(example, rng):
        out = base_preprocess(example, rng)
        if hard_weight:  # [K, T] ids and mask, [K] valid: one caption per kind (valid: it changed)
            negatives = [swap(example["text"], rng) for swap in swaps]
            rows = [text.token_row(n) for n in negatives]
            out.update(neg_ids=np.stack([r["ids"] for r in rows]),
                       neg_mask=np.stack([r["attention_mask"] for r in rows]),
                       neg_valid=np.array([n != example["text"] for n in negatives], np.float32))
        return out

    pipeline = Pipeline(source, global_batch_size=int(config.train.batch_size), seed=config.seed,
                        preprocess=preprocess, shuffle=config.data.shuffle, prefetch=config.data.prefetch)
    r1_gamma, r1_every = float(gan.r1_gamma), int(gan.r1_every)
    word_region = uses_word_region(gan)
    objective = dict(contrastive_weight=float(gan.contrastive_weight), temperature=float(gan.temperature),
                     word_region_weight=float(gan.word_region_weight))

    init = make_init(generator, discriminator, text, size, word_region)

    def d_tokens(cond, copies=1):
        """D's token inputs for the word-region loss ({} when it is off); `copies` stacks them for D's joint pass."""
        if not word_region:
            return {}
        tokens, mask = (jnp.concatenate([cond[k]] * copies) for k in ("context", "context_mask"))
        return dict(tokens=jax.lax.stop_gradient(tokens), token_mask=mask)

    def d_vars(params):
        return {"params": params["d"], **({"spectral": params["d_spectral"]} if "d_spectral" in params else {})}

    def fake_images(params, cond, rng, with_logits=False):
        """G's images; with_logits: (images, their tanh inputs)."""
        z = jax.random.normal(rng, (cond["pooled"].shape[0], z_dim), jnp.float32)
        args = ({"params": params["g"]}, z, cond["pooled"], cond["context"], cond["context_mask"])
        if not with_logits:
            return generator.apply(*args)
        images, state = generator.apply(*args, mutable=["intermediates"])
        return images, state["intermediates"]["synthesis"]["rgb_logits"][0]

    def maybe_augment(images, rng):
        return augment(images, rng) if gan.augment else images

    def hard_negative_texts(params, batch, pooled):
        """[K, 2B, D]: the pooled hard-negative captions of the B reals; the fakes' rows hold their own caption
        (D scores them, the loss ignores them: one D pass with no ragged shapes)."""
        b, k, length = batch["neg_ids"].shape
        flat = lambda a: a.reshape(b * k, length)  # noqa: E731
        negative = text.condition(params["text"], flat(batch["neg_ids"]), flat(batch["neg_mask"]))["pooled"]
        negative = jax.lax.stop_gradient(negative).reshape(b, k, -1).transpose(1, 0, 2)
        return jnp.concatenate([negative, jnp.broadcast_to(pooled, negative.shape)], axis=1)

    def d_loss_fn(params, batch, rng, step):
        z_rng, aug_rng = jax.random.split(rng)
        cond = jax.lax.stop_gradient(text.condition(params["text"], batch["ids"], batch["attention_mask"]))
        fake = jax.lax.stop_gradient(fake_images(params, cond, z_rng))
        b, pooled = fake.shape[0], cond["pooled"]
        # The same key for both halves: example i of the reals and of the fakes get the same transform.
        real = maybe_augment(batch["image"], aug_rng)
        images, texts = jnp.concatenate([real, maybe_augment(fake, aug_rng)]), jnp.concatenate([pooled, pooled])
        # One D pass over reals and fakes; rows [:b] of the rolled captions are the reals' mismatched captions.
        others = losses.mismatched_text(texts)
        if hard_weight:  # [1 + K, 2B, D]: the rolled captions, then per kind the reals' hard negatives
            others = jnp.concatenate([others[None], hard_negative_texts(params, batch, pooled)])
        out, new = discriminator.apply(d_vars(params), images, texts, others, update=True,
                                       mutable=["spectral"], **d_tokens(cond, 2))
        if hard_weight:
            hard_logit, out = out.mismatch_logit[1:, :b], out._replace(mismatch_logit=out.mismatch_logit[0])
        real_out, fake_out = (jax.tree.map(lambda a, s=s: a[s], out) for s in (slice(None, b), slice(b, None)))
        loss, metrics = losses.discriminator_objective(real_out, fake_out, mismatch_weight=float(gan.mismatch_weight),
                                                       **objective)
        if hard_weight:
            hard = losses.masked_fake_hinge(hard_logit, batch["neg_valid"].T)
            # Before hard_negative_start the term is logged but adds nothing: from scratch it pulls D onto the
            # swapped words before G draws any objects (README, "GAN: what was tried").
            weight = jnp.where(step >= hard_start, hard_weight, 0.0)
            loss, metrics["d_hard_negative"] = loss + weight * hard, hard
        if r1_gamma > 0:
            logit_fn = lambda x, t: discriminator.apply({"params": params["d"], **new}, x, t).logit  # noqa: E731
            r1 = losses.strided_r1_penalty(logit_fn, real, pooled, r1_gamma, r1_every)
            loss, metrics["r1"] = loss + r1, r1
        if new:
            metrics["updates"] = {"d_spectral": new["spectral"]}
        return loss, metrics

    def g_loss_fn(params, batch, rng, step):
        del step
        z_rng, aug_rng = jax.random.split(rng)
        cond = text.condition(params["text"], batch["ids"], batch["attention_mask"])  # stop_gradient unless trainable
        if saturation_weight:
            fake, logits = fake_images(params, cond, z_rng, with_logits=True)
        else:
            fake = fake_images(params, cond, z_rng)
        out = discriminator.apply(d_vars(params), maybe_augment(fake, aug_rng), jax.lax.stop_gradient(cond["pooled"]),
                                  **d_tokens(cond))
        loss, metrics = losses.generator_objective(out, **objective)
        if saturation_weight:
            penalty = losses.saturation_penalty(logits, saturation_bound)
            loss, metrics["g_saturation"] = loss + saturation_weight * penalty, penalty
        return loss, metrics

    g_groups = ("g", "text") if text.trainable else ("g",)
    betas = {"b1": float(gan.b1), "b2": float(gan.b2)}
    d_lr = float(gan.d_lr) or float(config.train.lr)
    overrides = {**{g: betas for g in g_groups}, "d": {**betas, "lr": d_lr}}
    # A trained text encoder is averaged with G, so the EMA generator samples with the matching averaged encoder.
    return Task(init=init, phases=(Phase(("d",), d_loss_fn, "d"), Phase(g_groups, g_loss_fn, "g")),
                batches=pipeline.global_batches, ema_groups=g_groups, optimizer_overrides=overrides,
                data_state=pipeline.state,
                sample=sample_grid_hook(config, workdir, sampler.generate, "g", int(gan.num_samples), gan.use_ema),
                pretrained=(lambda: {"text": text.pretrained()}) if text.pretrained else None)
