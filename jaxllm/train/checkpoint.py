"""Orbax checkpoints of the train state, the data-iterator state and run metadata.

Saves are async; orbax writes into a temporary folder and renames it when complete, so a run
killed mid-save never leaves a checkpoint that looks finished. A checkpoint that fails to restore
(corrupted files) is reported and the previous one is tried.
"""
from __future__ import annotations

import logging
import warnings
from pathlib import Path
from typing import Any

import grain
import jax
import orbax.checkpoint as ocp

log = logging.getLogger(__name__)


class CheckpointError(RuntimeError):
    pass


class Checkpointer:
    def __init__(self, directory: str | Path, keep: int = 3, async_save: bool = True):
        self.directory = Path(directory).absolute()
        options = ocp.CheckpointManagerOptions(max_to_keep=keep, enable_async_checkpointing=async_save,
                                               create=True, cleanup_tmp_directories=True)
        self.manager = ocp.CheckpointManager(self.directory, options=options)

    def save(self, step: int, state: Any, data_iter: Any | None = None, meta: dict | None = None,
             force: bool = False) -> bool:
        items = {"state": ocp.args.StandardSave(state), "meta": ocp.args.JsonSave(meta or {})}
        if data_iter is not None:
            save = getattr(data_iter, "checkpoint_save", None)  # iterators with their own handler
            items["data_iter"] = save() if save else grain.checkpoint.CheckpointSave(data_iter)
        return self.manager.save(step, args=ocp.args.Composite(**items), force=force)

    def steps(self) -> list[int]:
        return sorted(self.manager.all_steps())

    def restore(self, abstract_state: Any, data_iter: Any | None = None) -> tuple[int, Any, dict] | None:
        """Restore the newest readable checkpoint onto `abstract_state`'s shardings; None if there is none.

        `abstract_state` is a tree of jax.ShapeDtypeStruct with `.sharding` (restoring onto another
        mesh reshards). `data_iter`, if given, is set to the saved iterator position in place.
        """
        for step in reversed(self.steps()):
            items = {"state": ocp.args.StandardRestore(abstract_state), "meta": ocp.args.JsonRestore()}
            if data_iter is not None:
                restore = getattr(data_iter, "checkpoint_restore", None)
                items["data_iter"] = restore() if restore else grain.checkpoint.CheckpointRestore(data_iter)
            try:
                restored = self.manager.restore(step, args=ocp.args.Composite(**items))
            except Exception as e:  # corrupted/partial files: fall back to the previous checkpoint
                warnings.warn(f"checkpoint {self.directory}/{step} could not be restored ({type(e).__name__}: "
                              f"{str(e)[:200]}); trying the previous one", stacklevel=2)
                continue
            return step, restored["state"], dict(restored["meta"] or {})
        return None

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()


def abstract_like(state: Any, shardings: Any) -> Any:
    """ShapeDtypeStructs of `state` placed on `shardings` (the restore target)."""
    return jax.tree.map(lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s), state, shardings)
