"""Logical axis names -> mesh shardings through one rules table (`config.sharding_rules`).

A parameter dimension whose mesh axes do not divide it evenly is replicated, and a mesh axis is used at most
once per array (a later dimension asking for an axis already used is replicated)."""

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
