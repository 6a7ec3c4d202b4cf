"""The device mesh: axes ("data", "fsdp", "tensor"), optionally split into an ICI part (within a slice/host)
and a DCN part (across slices/hosts)."""

from __future__ import annotations

import math
from typing import Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import Mesh

from llmimg_jax.errors import UserError

AXES = ("data", "fsdp", "tensor")


def _resolve(sizes: dict[str, int], total: int, what: str) -> tuple[int, ...]:
    """Fills in the one -1 axis so that the sizes multiply to `total`."""
    free = [a for a in AXES if sizes[a] == -1]
    if len(free) > 1 or any(sizes[a] < 1 and sizes[a] != -1 for a in AXES):
        raise UserError(f"{what} sizes {sizes} are invalid; use positive sizes with at most one -1")
    known = math.prod(sizes[a] for a in AXES if sizes[a] != -1)
    if free:
        if total % known:
            raise UserError(f"{what} sizes {sizes} cannot fill {total} devices: {known} does not divide {total}; "
                            f"change mesh.* so the fixed sizes divide the device count")
        sizes = {**sizes, free[0]: total // known}
    shape = tuple(sizes[a] for a in AXES)
    if math.prod(shape) != total:
        raise UserError(f"{what} data×fsdp×tensor = {'×'.join(map(str, shape))} = {math.prod(shape)} does not "
                        f"match {total} devices; set mesh.data/fsdp/tensor to multiply to {total} or make one -1")
    return shape


def mesh_shapes(mesh_config, num_devices: int) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Returns (ici_shape, dcn_shape) over AXES for `num_devices` devices; UserError when they do not fit."""
    dcn_sizes = {a: int(mesh_config.get(f"dcn_{a}", 1)) for a in AXES}
    if any(s < 1 for s in dcn_sizes.values()):
        raise UserError(f"mesh dcn sizes {dcn_sizes} must be positive integers (no -1)")
    num_slices = math.prod(dcn_sizes.values())
    if num_devices % num_slices:
        raise UserError(f"mesh dcn_data×dcn_fsdp×dcn_tensor = {num_slices} does not divide {num_devices} devices; "
                        f"set mesh.dcn_* to the number of slices/hosts")
    dcn = tuple(dcn_sizes[a] for a in AXES)
    ici = _resolve({a: int(mesh_config[a]) for a in AXES}, num_devices // num_slices, "mesh (per slice)")
    return ici, dcn


def make_mesh(mesh_config, devices: Sequence[jax.Device] | None = None) -> Mesh:
    """Builds the mesh from `config.mesh` (all devices by default). Axis size = ICI size × DCN size."""
    devices = list(jax.devices() if devices is None else devices)
    ici, dcn = mesh_shapes(mesh_config, len(devices))
    if math.prod(dcn) > 1:
        # Granules are slices where the platform has them (TPU), otherwise processes (GPU/CPU hosts).
        by_process = not hasattr(devices[0], "slice_index")
        array = mesh_utils.create_hybrid_device_mesh(ici, dcn, devices, process_is_granule=by_process)
    elif len(devices) == len(jax.devices()):
        array = mesh_utils.create_device_mesh(ici, devices)
    else:  # a subset (tests, inference on fewer devices): keep the given order
        array = np.asarray(devices).reshape(ici)
    return Mesh(array, AXES)
