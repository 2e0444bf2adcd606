"""Tasks: what differs between segmentation and translation (batch keys, losses, optimisers, metrics, images, tables).

A task is a :class:`~cen.tasks.base.Task` registered in :data:`TASKS`; the engine
(:mod:`cen.train`) runs any of them. :func:`build_task` makes the one a config names.
"""

from cen.tasks.base import Task
from cen.tasks.registry import DATASETS, MODELS, TASKS, RegistryError


def build_task(cfg) -> Task:
    """The task of ``cfg.task`` (``segmentation`` by default), built from the resolved config."""
    return TASKS.get(cfg.task)(cfg)


#: Modules whose import registers the built-in data sets, segmentation and translation.
BUILTIN = ("cen.tasks.datasets", "cen.tasks.segmentation", "cen.tasks.translation.task", "cen.tasks.presence")


def _register_builtin() -> None:
    import importlib

    for name in BUILTIN:
        importlib.import_module(name)


_register_builtin()

__all__ = ["DATASETS", "MODELS", "TASKS", "RegistryError", "Task", "build_task"]
