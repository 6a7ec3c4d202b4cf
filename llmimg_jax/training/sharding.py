"""Logical axis names -> mesh shardings through one rules table (`config.sharding_rules`).

A parameter dimension whose mesh axes do not divide it evenly is replicated, and a mesh axis is used at most
once per array (a later dimension asking for an axis already used is replicated).

Parameters are stored sharded over the batch's axes too (FSDP: "fsdp"); modules gather them over those axes
where they are used (`gather_for_compute`). Besides being what FSDP means, this avoids an XLA SPMD partitioner
bug (jax 0.10.2, Shardy and GSPMD alike): a dot or convolution whose input is batch-sharded over ("data", "fsdp") and
feature-sharded over "tensor", contracting with a weight sharded [tensor, fsdp], with its output wanted sharded
[("data", "fsdp"), "tensor"], swaps the batch rows of the devices at (data, fsdp) = (0, 1) and (1, 0). Backward
passes through [fsdp, tensor] kernels produce exactly that case, so gradients came out wrong for the middle
batch shards."""

from __future__ import annotations

import math
from typing import Any, Sequence

import flax.linen as nn
import jax
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from llmimg_jax.errors import UserError

Rules = Sequence[tuple[str, Any]]


def rules_table(rules: Rules) -> dict[str, tuple[str, ...]]:
    """{logical name: tuple of mesh axes} from the config's ((name, axes), ...) pairs; first rule wins."""
    table: dict[str, tuple[str, ...]] = {}
    for rule in rules:
        if len(rule) != 2:
            raise UserError(f"sharding rule {rule!r} is not a (logical_name, mesh_axes) pair; fix config.sharding_rules")
        name, axes = rule
        axes = () if axes is None else (axes,) if isinstance(axes, str) else tuple(axes)
        table.setdefault(name, axes)
    return table


def mesh_spec(names: Sequence[str | None], shape: Sequence[int], mesh: Mesh, rules: Rules) -> P:
    """PartitionSpec for one array from its logical dimension names."""
    table = rules_table(rules)
    used: set[str] = set()
    spec = []
    for name, dim in zip(names, shape):
        axes = tuple(a for a in table.get(name, ()) if a in mesh.shape) if name is not None else ()
        size = math.prod(mesh.shape[a] for a in axes)
        if not axes or size == 1 or dim % size or used & set(axes):
            spec.append(None)
            continue
        used |= set(axes)
        spec.append(axes[0] if len(axes) == 1 else axes)
    return P(*spec)


def _drop_axes(entry: Any, drop: set[str]) -> Any:
    """One PartitionSpec entry without the mesh axes in `drop`."""
    axes = () if entry is None else (entry,) if isinstance(entry, str) else tuple(entry)
    kept = tuple(a for a in axes if a not in drop)
    return None if not kept else kept[0] if len(kept) == 1 else kept


def gather_for_compute(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """A parameter with logical `names` as used in computation: sharded as stored, minus the batch's mesh axes.

    That is FSDP's all-gather at the point of use (its transpose reduce-scatters the gradient). Modules call it on
    every kernel; see the module docstring for the XLA bug it also avoids. Works from the mesh of
    `jax.set_mesh(mesh)` and the rules of `nn.logical_axis_rules(rules)`; without both it returns `x` as is.
    """
    rules = nn.get_logical_axis_rules()
    mesh = jax.sharding.get_abstract_mesh()
    if not rules or mesh.empty:
        return x
    names = tuple(names) + (None,) * (x.ndim - len(tuple(names)))
    stored = mesh_spec(names, x.shape, mesh, rules)
    batch_axes = set(rules_table(rules).get("batch", ()))
    used = tuple(_drop_axes(entry, batch_axes) for entry in stored)
    if used == tuple(stored):
        return x  # nothing sharded over the batch axes
    return jax.lax.with_sharding_constraint(x, P(*used))


def constrain(x: jax.Array, names: Sequence[str | None]) -> jax.Array:
    """An activation constrained to the sharding of its logical `names` (by the same table as parameters, so a
    dimension its mesh axes do not divide is replicated); without a mesh and rules in context, `x` as is."""
    rules = nn.get_logical_axis_rules()
    mesh = jax.sharding.get_abstract_mesh()
    if not rules or mesh.empty:
        return x
    return jax.lax.with_sharding_constraint(x, mesh_spec(names, x.shape, mesh, rules))


CONV_NAMES = (None, None, "conv_in", "conv_out")  # logical names of a convolution kernel [kh, kw, in, out]


# A drop-in `conv_general_dilated` for nn.Conv: the kernel (rhs) is gathered for compute (`gather_for_compute`).
def conv_gathered(lhs: jax.Array, rhs: jax.Array, *args, names: Sequence[str | None] = CONV_NAMES,
                  **kwargs) -> jax.Array:
    return jax.lax.conv_general_dilated(lhs, gather_for_compute(rhs, names), *args, **kwargs)


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def param_shardings(boxed_abstract: Any, mesh: Mesh, rules: Rules) -> Any:
    """NamedShardings for the unboxed version of a tree of (possibly `nn.LogicallyPartitioned`) leaves.

    Leaves without logical names are replicated."""
    specs = nn.get_partition_spec(boxed_abstract)
    unboxed = nn.unbox(boxed_abstract)

    def one(spec, leaf):
        names = tuple(spec) + (None,) * (len(leaf.shape) - len(tuple(spec)))
        return NamedSharding(mesh, mesh_spec(names, leaf.shape, mesh, rules))

    return jax.tree.map(one, specs, unboxed, is_leaf=lambda x: isinstance(x, P))


def batch_sharding(mesh: Mesh, rules: Rules) -> NamedSharding:
    """Sharding of a batch's leading dimension, from the rule for the logical name `batch`."""
    axes = tuple(a for a in rules_table(rules).get("batch", ()) if a in mesh.shape)
    return NamedSharding(mesh, P(axes if axes else None))


def batch_shards(mesh: Mesh, rules: Rules) -> int:
    """How many ways the batch dimension is split."""
    return math.prod(mesh.shape[a] for a in rules_table(rules).get("batch", ()) if a in mesh.shape)
