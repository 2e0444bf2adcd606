"""The engine's registries: tasks, models and datasets, each a :class:`cen.core.registry.Registry`.

    @MODELS.register("tiny")
    def tiny(cfg): ...          # a builder taking the resolved config

    MODELS.get("tiny")          # the builder
    MODELS.get("tyni")          # RegistryError: unknown model 'tyni'; known: refinenet, tiny

A wrong name in a config is the user's mistake, so lookups here raise
:class:`RegistryError` (a :class:`~cen.errors.UserError` and a ``ValueError``):
the command line prints it as one line.
"""

from __future__ import annotations

from typing import TypeVar

from cen.core.registry import Registry
from cen.errors import RegistryError

T = TypeVar("T")


class UserRegistry(Registry[T]):
    """A registry whose unknown names are user errors (names from configs and the command line)."""

    def get(self, name: str) -> T:
        try:
            return super().get(name)
        except ValueError as err:
            raise RegistryError(str(err)) from None


#: ``task:`` of a config -> :class:`cen.tasks.base.Task` subclass.
TASKS: UserRegistry = UserRegistry("task")
#: ``model.name`` -> builder ``(cfg) -> nn.Module``.
MODELS: UserRegistry = UserRegistry("model")
#: ``data.dataset`` -> :class:`cen.tasks.datasets.DatasetEntry`.
DATASETS: UserRegistry = UserRegistry("dataset")
