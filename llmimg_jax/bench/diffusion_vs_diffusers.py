"""Diffusion train step, ours vs diffusers' UNet2DConditionModel (torch, CPU), at equal settings.

Both sides: the same U-Net layout (`unets.py`), batch and resolution, ε-prediction MSE with t ~ U{0..999} on the
linear schedule, AdamW (lr 1e-4, weight decay 1e-4), float32. Timed in alternation, medians; examples/s.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import jax
import jax.numpy as jnp
import optax

from llmimg_jax.bench import unets
from llmimg_jax.bench.rows import Row, alternate, skipped_row, torch_setup
from llmimg_jax.generator.diffusion.loss import diffusion_loss
from llmimg_jax.generator.diffusion.schedules import make_schedule
from llmimg_jax.generator.diffusion.unet import UNetConfig, unet_config, unet_model_fn

GROUP = "diffusion train step vs diffusers"
LR, WEIGHT_DECAY = 1e-4, 1e-4


@dataclasses.dataclass(frozen=True)
class Setup:
    size: int
    preset: str
    batch: int
    overrides: tuple = ()  # (field, value) pairs on the preset

    @property
    def config(self) -> UNetConfig:
        return unet_config(self.preset, **dict(self.overrides))

    @property
    def label(self) -> str:
        extra = "".join(f", {k}={v}" for k, v in self.overrides)
        return f"S={self.size}, U-Net {self.preset}{extra}, batch {self.batch}"


def make_jax_train(cfg: UNetConfig, size: int, batch: int) -> tuple[Callable, dict]:
    """(jitted step(params, opt_state, key) -> (params, opt_state, loss), initial {"params", "opt"})."""
    unet, params = unets.our_unet(cfg, size)
    data = unets.inputs(batch, size)
    x0, cond = jnp.asarray(data["x0"]), {"context": jnp.asarray(data["context"]),
                                          "context_mask": jnp.ones((batch, unets.CONTEXT_LEN), bool)}
    model_fn, schedule = unet_model_fn(unet), make_schedule("linear", 1000)
    tx = optax.adamw(LR, weight_decay=WEIGHT_DECAY)

    @jax.jit
    def step(params, opt_state, key):
        loss, grads = jax.value_and_grad(
            lambda p: diffusion_loss(model_fn, p, x0, cond, key, schedule, "eps"))(params)
        updates, opt_state = tx.update(grads, opt_state, params)
        return optax.apply_updates(params, updates), opt_state, loss

    return step, {"params": params, "opt": tx.init(params)}


def jax_train_step(cfg: UNetConfig, size: int, batch: int) -> tuple[Callable[[], Any], int]:
    """(one-step closure that updates its own state, parameter count) for our U-Net."""
    step, state = make_jax_train(cfg, size, batch)
    state["key"] = jax.random.key(1)

    def one_step():
        state["key"], key = jax.random.split(state["key"])
        state["params"], state["opt"], loss = step(state["params"], state["opt"], key)
        return loss

    return one_step, unets.param_count(state["params"])


def torch_train_step(cfg: UNetConfig, size: int, batch: int) -> tuple[Callable[[], Any], int]:
    """The same step in torch with diffusers' UNet2DConditionModel (NCHW, as diffusers expects)."""
    torch = torch_setup()
    torch.manual_seed(0)
    model = unets.diffusers_unet(cfg, size).train()
    data = unets.inputs(batch, size)
    x0 = torch.from_numpy(data["x0"]).permute(0, 3, 1, 2).contiguous()
    context = torch.from_numpy(data["context"])
    acp = torch.from_numpy(make_schedule("linear", 1000).alphas_cumprod)
    # foreach=True: the multi-tensor AdamW, torch's fastest CPU variant here (the per-tensor loop is the default).
    opt = torch.optim.AdamW(model.parameters(), lr=LR, weight_decay=WEIGHT_DECAY, foreach=True)

    def one_step():
        t = torch.randint(0, 1000, (batch,))
        eps = torch.randn_like(x0)
        a = acp[t].sqrt().view(-1, 1, 1, 1)
        x_t = a * x0 + (1 - a * a).sqrt() * eps
        loss = torch.nn.functional.mse_loss(model(x_t, t, encoder_hidden_states=context).sample, eps)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        return float(loss.detach())

    return one_step, unets.param_count(model)


def run(setups: list[Setup], repeats: int) -> list[Row]:
    rows = []
    for s in setups:
        setting = f"{s.label}; ε-MSE, AdamW, float32"
        try:
            torch_step, torch_params = torch_train_step(s.config, s.size, s.batch)
        except ImportError as e:
            rows.append(skipped_row(GROUP, setting, e))
            continue
        jax_step, jax_params = jax_train_step(s.config, s.size, s.batch)
        t = alternate({"ours": jax_step, "peer": torch_step}, repeats)
        ours, peer = s.batch / t["ours"], s.batch / t["peer"]
        rows.append(Row(GROUP, f"{setting}; params {jax_params / 1e6:.2f} M vs {torch_params / 1e6:.2f} M",
                        f"{ours:.1f} ex/s", f"{peer:.1f} ex/s", ours / peer,
                        dict(size=s.size, batch=s.batch, ours_s=t["ours"], peer_s=t["peer"],
                             ours_first_s=t["ours_first"], ours_params=jax_params, peer_params=torch_params)))
    return rows
