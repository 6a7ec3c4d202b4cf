"""Minimal reproduction: XLA's SPMD partitioner (jax/jaxlib 0.10.2, CPU; Shardy and GSPMD alike) miscomputes a
dot / convolution on a (data=2, fsdp=2, tensor=2) mesh.

    x  [B, K]  sharded P(("data", "fsdp"), "tensor")   (batch over data*fsdp, features over tensor)
    w  [K, N]  sharded P("tensor", "fsdp")              (contracting dim over tensor, output dim over fsdp)
    y = x @ w  wanted  P(("data", "fsdp"), "tensor")

The partitioned HLO is: collective-permute of x with pairs {2<->4, 3<->5} (it swaps the data and fsdp coordinates
of the batch shards), all-gather of w over fsdp, local dot, all-reduce over tensor, slice by tensor index -- and no
permute back. So rows of batch shards 1 and 2 (devices at (data, fsdp) = (0, 1) and (1, 0)) get each other's
results. Any other combination of these shardings is right; so is batch P(("fsdp", "data")).

In a model, the backward pass of a kernel [in -> fsdp, out -> tensor] computes dx = dy @ w.T, which is exactly
this case once Shardy propagates "tensor" onto dx's features: hence wrong gradients (the U-Net) and wrong input
gradients (the GAN's R1) for the middle batch shards, while losses are right.

Workaround (what llmimg_jax does, FSDP's usual all-gather at use): constrain the weight to its sharding without
the batch axes before the dot, `with_sharding_constraint(w, P("tensor", None))`.

Run: python scripts/xla_3d_mesh_repro.py   (prints the wrong rows: [2 3 4 5]; then [] with the workaround)
"""
import os

os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=8 " + os.environ.get("XLA_FLAGS", "")

import jax  # noqa: E402
import numpy as np  # noqa: E402
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P  # noqa: E402

mesh = Mesh(np.array(jax.devices()).reshape(2, 2, 2), ("data", "fsdp", "tensor"))
rows = NamedSharding(mesh, P(("data", "fsdp"), "tensor"))
rng = np.random.default_rng(0)
x = rng.standard_normal((8, 16)).astype(np.float32)
w = rng.standard_normal((16, 16)).astype(np.float32)
x_sh = jax.device_put(x, rows)
w_sh = jax.device_put(w, NamedSharding(mesh, P("tensor", "fsdp")))

plain = jax.jit(lambda x, w: x @ w, out_shardings=rows)
gathered = jax.jit(lambda x, w: x @ jax.lax.with_sharding_constraint(w, NamedSharding(mesh, P("tensor", None))),
                   out_shardings=rows)
for name, fn in (("plain", plain), ("workaround", gathered)):
    wrong = np.nonzero(np.abs(np.asarray(fn(x_sh, w_sh)) - x @ w).max(axis=1) > 1e-3)[0]
    print(f"{name:10s} wrong rows: {wrong}")

# The same with a convolution (kernel [kh, kw, in -> tensor, out -> fsdp], as in a conv's input gradient).
xc = rng.standard_normal((8, 4, 4, 16)).astype(np.float32)
kc = rng.standard_normal((3, 3, 16, 16)).astype(np.float32)
conv = lambda x, k: jax.lax.conv_general_dilated(x, k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC"))
act = NamedSharding(mesh, P(("data", "fsdp"), None, None, "tensor"))
out = jax.jit(conv, out_shardings=act)(jax.device_put(xc, act),
                                       jax.device_put(kc, NamedSharding(mesh, P(None, None, "tensor", "fsdp"))))
wrong = np.nonzero(np.abs(np.asarray(out) - np.asarray(jax.jit(conv)(xc, kc))).reshape(8, -1).max(axis=1) > 1e-3)[0]
print(f"conv       wrong examples: {wrong}")
print(jax.jit(lambda x, w: x @ w, out_shardings=rows).lower(x_sh, w_sh).compile().as_text().count("collective-permute("),
      "collective-permute in the plain dot's partitioned HLO")
