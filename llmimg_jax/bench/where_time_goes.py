"""Where the time goes: forward+backward of the U-Net's main operations alone, ours (XLA CPU) vs torch, at the
shapes of the S = 32 `small` U-Net. Run when a peer comparison comes out below 1, to say which ops cost it."""

from __future__ import annotations

from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from llmimg_jax.bench.rows import Row, alternate, torch_setup
from llmimg_jax.generator.layers import GroupNorm

GROUP = "where the time goes (fwd+bwd per op)"


def _jax_grad(f: Callable, *args: jax.Array) -> Callable[[], Any]:
    step = jax.jit(jax.grad(lambda *a: jnp.sum(f(*a)), argnums=tuple(range(len(args)))))
    return lambda: step(*args)


def _torch_grad(torch: Any, f: Callable, *arrays: np.ndarray) -> Callable[[], Any]:
    tensors = [torch.from_numpy(a).requires_grad_() for a in arrays]

    def run():
        for t in tensors:
            t.grad = None
        f(*tensors).sum().backward()
    return run


def op_benchmarks(batch: int) -> dict[str, tuple[Callable, Callable]]:
    """name -> (ours, torch) closures computing gradients with respect to every input."""
    torch = torch_setup()
    F = torch.nn.functional
    rng = np.random.default_rng(0)
    normal = lambda *shape: rng.standard_normal(shape).astype(np.float32)  # noqa: E731
    out = {}
    for size, ch in ((32, 32), (16, 64)):
        x, w = normal(batch, size, size, ch), normal(3, 3, ch, ch) * 0.1
        conv = lambda x, w: jax.lax.conv_general_dilated(x, w, (1, 1), "SAME",  # noqa: E731
                                                         dimension_numbers=("NHWC", "HWIO", "NHWC"))
        out[f"conv 3x3 {ch}->{ch} at {size}x{size}"] = (
            _jax_grad(conv, jnp.asarray(x), jnp.asarray(w)),
            _torch_grad(torch, lambda x, w: F.conv2d(x, w, padding=1), x.transpose(0, 3, 1, 2).copy(),
                        w.transpose(3, 2, 0, 1).copy()))
    x = normal(batch, 32, 32, 32)
    norm = GroupNorm(8)
    params = norm.init(jax.random.key(0), x[:1])
    out["GroupNorm(8) at 32x32x32"] = (
        _jax_grad(lambda x: norm.apply(params, x), jnp.asarray(x)),
        _torch_grad(torch, lambda x: F.group_norm(x, 8, eps=1e-6), x.transpose(0, 3, 1, 2).copy()))
    q, k, v = (normal(batch, 256, 4, 16) for _ in range(3))

    def attention(q, k, v):  # the core of layers.Attention
        weights = jax.nn.softmax(jnp.einsum("bnhd,bthd->bhnt", q, k) / 4.0, axis=-1)
        return jnp.einsum("bhnt,bthd->bnhd", weights, v)
    out["self-attention core, 256 tokens, 4x16"] = (
        _jax_grad(attention, *map(jnp.asarray, (q, k, v))),
        _torch_grad(torch, lambda q, k, v: F.scaled_dot_product_attention(q, k, v),
                    *(a.transpose(0, 2, 1, 3).copy() for a in (q, k, v))))
    return out


def run(batch: int, repeats: int) -> list[Row]:
    rows = []
    for name, (ours, peer) in op_benchmarks(batch).items():
        t = alternate({"ours": ours, "peer": peer}, repeats)
        rows.append(Row(GROUP, f"{name}, batch {batch}", f"{1000 * t['ours']:.1f} ms", f"{1000 * t['peer']:.1f} ms",
                        t["peer"] / t["ours"], values=dict(ours_s=t["ours"], peer_s=t["peer"])))
    return rows
