"""Device mesh from a small config: axes ("data", "fsdp", "tensor"), -1 fills the rest."""
from __future__ import annotations

import dataclasses
import math
from typing import Optional, Sequence

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

MESH_AXES = ("data", "fsdp", "tensor")


@dataclasses.dataclass(frozen=True)
class MeshConfig:
    """Mesh axis sizes; exactly one may be -1 (= all remaining devices)."""

    data: int = -1
    fsdp: int = 1
    tensor: int = 1


def mesh_shape(cfg: MeshConfig, n_devices: int) -> tuple[int, int, int]:
    """Resolve -1 and check that data * fsdp * tensor == n_devices (clear error otherwise)."""
    sizes = [cfg.data, cfg.fsdp, cfg.tensor]
    named = ", ".join(f"{a}={s}" for a, s in zip(MESH_AXES, sizes))
    if sizes.count(-1) > 1:
        raise ValueError(f"mesh ({named}): at most one axis may be -1; set the others explicitly")
    if any(s == 0 or s < -1 for s in sizes):
        raise ValueError(f"mesh ({named}): sizes must be positive or -1")
    fixed = math.prod(s for s in sizes if s != -1)
    if -1 in sizes:
        if n_devices % fixed:
            raise ValueError(
                f"mesh ({named}): the fixed axes multiply to {fixed}, which does not divide the {n_devices} "
                f"devices; choose sizes whose product divides {n_devices}"
            )
        sizes[sizes.index(-1)] = n_devices // fixed
    elif fixed != n_devices:
        raise ValueError(
            f"mesh ({named}): data*fsdp*tensor = {fixed} but there are {n_devices} devices; make the product "
            f"{n_devices} or set one axis to -1 (e.g. mesh.data=-1)"
        )
    return tuple(sizes)


def make_mesh(cfg: MeshConfig = MeshConfig(), devices: Optional[Sequence[jax.Device]] = None) -> Mesh:
    """A Mesh with axes ("data", "fsdp", "tensor") and Auto axis types over `devices` (default: all)."""
    devices = list(jax.devices() if devices is None else devices)
    shape = mesh_shape(cfg, len(devices))
    try:
        from jax.experimental import mesh_utils

        grid = mesh_utils.create_device_mesh(shape, devices=devices, allow_split_physical_axes=True)
    except Exception:  # CPU or odd topologies: plain row-major order is fine
        grid = np.asarray(devices, dtype=object).reshape(shape)
    return Mesh(grid, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))
