"""Device meshes and the logical-axis rules table (sharding is declared, not hand-written)."""
from jaxllm.parallel.mesh import MESH_AXES, MeshConfig, make_mesh, mesh_shape
from jaxllm.parallel.rules import LOGICAL_RULES, fit_spec, logical_sharding, per_device_bytes, shard_batch_spec

__all__ = [
    "MESH_AXES", "MeshConfig", "make_mesh", "mesh_shape", "LOGICAL_RULES", "logical_sharding",
    "shard_batch_spec", "fit_spec", "per_device_bytes",
]
