"""Tasks: one file per kind of learning (semantic, instance, decoupled, gan_ss).

A registered network declares its task (``register_model(..., task="instance")``); the loop and
every command reach the task through :func:`build_task` and ask it what differs. A task's file
registers its class with :func:`register_task`; :data:`TASK_MODULES` names the file of each
built-in task, so only the task a run needs is imported. A task registered elsewhere (a plug-in,
a test) is found once its module is imported.

>>> task = build_task(config, num_classes=21, classes=names, palette=colours)
>>> task.score_name, task.prediction_files("street")
"""

from __future__ import annotations

import importlib
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from pixelwise import models
from pixelwise.errors import PixelwiseError
from pixelwise.registry import Registry

if TYPE_CHECKING:
    from pixelwise.config import Config
    from pixelwise.tasks.base import Task

TASKS: Registry[type[Task]] = Registry("task")

#: The module that registers each built-in task.
TASK_MODULES: dict[str, str] = {
    "semantic": "pixelwise.tasks.semantic",
    "instance": "pixelwise.tasks.instance",
    "gan_ss": "pixelwise.tasks.gan_ss",
    "decoupled": "pixelwise.tasks.decoupled",
}


def register_task(name: str) -> Callable[[type[Task]], type[Task]]:
    """Register a task class under ``name`` (the name networks declare)."""

    def wrap(cls: type[Task]) -> type[Task]:
        cls.name = name
        TASKS.add(name, cls)
        return cls

    return wrap


def task_class(model_name: str) -> type[Task]:
    """The task class the registered network ``model_name`` declares."""
    name = models.model_info(model_name).task
    if name not in TASKS:
        if name not in TASK_MODULES:
            known = sorted({*TASK_MODULES, *TASKS.names()})
            raise PixelwiseError(
                f"Model {model_name!r} declares the task {name!r}, which pixelwise does not know; "
                f"known tasks: {', '.join(known)}."
            )
        importlib.import_module(TASK_MODULES[name])
    return TASKS.get(name)


def build_task(
    config: Config,
    num_classes: int,
    classes: Sequence[str],
    palette: Sequence,
    *,
    category_ids: Sequence[int] = (),
) -> Task:
    """The task object for a run of ``config.model.name``."""
    cls = task_class(config.model.name)
    return cls(config, num_classes, classes, palette, category_ids=category_ids)


def staged_networks() -> list[str]:
    """The registered networks whose task trains in stages (``train.classifier_iters``)."""
    return [name for name in models.list_models() if task_class(name).staged]
