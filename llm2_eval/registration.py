"""Making lm-eval find the ``llm2`` model and the llm2 tasks with no extra flags.

lm-eval 0.4.13 reads no plugin entry points (``pyproject.toml`` declares ``lm_eval.models`` / ``lm_eval.tasks``
entry points for versions that do). For 0.4.x this package installs ``llm2_eval_hook.pth`` into site-packages;
Python executes it at start-up, and it calls :func:`install_import_hook`, which costs one ``sys.meta_path`` entry
and imports nothing else. The hook acts only when lm-eval itself is imported:

- after ``lm_eval.api.registry`` loads, it imports ``lm_eval.models`` (so lm-eval's built-in models such as
  ``hf`` are registered exactly as without us; lm-eval registers them lazily only while its registry is empty)
  and then registers ``llm2`` as a lazy placeholder ``llm2_eval.lm_eval_model:LLM2LM``;
- after ``lm_eval.tasks.manager`` loads, it wraps ``TaskManager.__init__`` so that the default task paths also
  include this package's task directory (after lm-eval's own tasks, before any ``--include_path``).

This is the project's one documented patch of lm-eval. ``llm2 eval`` calls :func:`register_all` explicitly, so
it works even where the ``.pth`` file is not installed. Set ``LLM2_EVAL_NO_HOOK=1`` to disable the hook.
"""

from __future__ import annotations

import functools
import importlib.abc
import importlib.machinery
import importlib.util
import inspect
import sys
from pathlib import Path
from types import ModuleType
from typing import Callable

MODEL_NAME = "llm2"
MODEL_TARGET = "llm2_eval.lm_eval_model:LLM2LM"


def tasks_dir() -> Path:
    """Directory of the llm2 task YAMLs: ``llm2_eval/tasks`` in a wheel, ``<repo>/tasks`` in a source checkout.

    Raises:
        FileNotFoundError: when neither exists (a broken installation).
    """
    here = Path(__file__).resolve().parent
    for cand in (here / "tasks", here.parent / "tasks"):
        if (cand / "utils.py").exists():
            return cand
    raise FileNotFoundError(f"llm2 task directory not found (looked in {here / 'tasks'} and {here.parent / 'tasks'})")


def register_model() -> None:
    """Register ``llm2`` in lm-eval's model registry, after lm-eval's built-in models. Idempotent."""
    import lm_eval.models  # noqa: F401  (registers the built-in models first)
    from lm_eval.api.registry import model_registry

    if MODEL_NAME not in model_registry:
        model_registry.register(MODEL_NAME, target=MODEL_TARGET)


def _with_llm2_tasks(init: Callable) -> Callable:
    if getattr(init, "_llm2_wrapped", False):
        return init
    signature = inspect.signature(init)

    @functools.wraps(init)
    def __init__(self, *args, **kwargs):
        bound = signature.bind(self, *args, **kwargs)
        bound.apply_defaults()
        if bound.arguments.get("include_defaults", True):
            try:
                ours = str(tasks_dir())
            except FileNotFoundError:
                ours = None
            given = bound.arguments.get("include_path")
            given = [] if given is None else list(given) if isinstance(given, (list, tuple)) else [given]
            if ours is not None and ours not in [str(p) for p in given]:
                bound.arguments["include_path"] = [ours, *given]
        return init(*bound.args, **bound.kwargs)

    __init__._llm2_wrapped = True  # type: ignore[attr-defined]
    return __init__


def register_tasks() -> None:
    """Make every ``TaskManager`` (that includes lm-eval's default tasks) also index the llm2 tasks. Idempotent."""
    from lm_eval.tasks.manager import TaskManager

    TaskManager.__init__ = _with_llm2_tasks(TaskManager.__init__)


def register_all() -> None:
    """Register the ``llm2`` model and the llm2 tasks with the installed lm-eval (what the hook does lazily)."""
    register_model()
    register_tasks()


_AFTER_IMPORT: dict[str, Callable[[ModuleType], None]] = {
    "lm_eval.api.registry": lambda module: register_model(),
    "lm_eval.tasks.manager": lambda module: register_tasks(),
}


class _RunAfterExec(importlib.abc.Loader):
    """Loader wrapper: executes the real loader, then the registration callback for that module."""

    def __init__(self, loader: importlib.abc.Loader, callback: Callable[[ModuleType], None]):
        self._loader = loader
        self._callback = callback

    def create_module(self, spec):
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        try:
            self._callback(module)
        except Exception as err:  # never break lm-eval because of us
            print(f"llm2-eval: registration with lm-eval failed: {err!r}", file=sys.stderr)

    def __getattr__(self, name):  # get_source, get_code, is_package, ... of the real loader
        return getattr(self._loader, name)


class _LmEvalHook(importlib.abc.MetaPathFinder):
    """Meta-path finder that wraps the loaders of the lm-eval modules in ``_AFTER_IMPORT``."""

    def __init__(self) -> None:
        self._busy: set[str] = set()

    def find_spec(self, fullname, path, target=None):
        callback = _AFTER_IMPORT.get(fullname)
        if callback is None or fullname in self._busy:
            return None
        self._busy.add(fullname)
        try:
            spec = importlib.machinery.PathFinder.find_spec(fullname, path)
        finally:
            self._busy.discard(fullname)
        if spec is None or spec.loader is None:
            return None
        spec.loader = _RunAfterExec(spec.loader, callback)
        return spec


def install_import_hook() -> None:
    """Install the lm-eval registration hook (idempotent); if lm-eval is already imported, register now."""
    if any(isinstance(f, _LmEvalHook) for f in sys.meta_path):
        return
    sys.meta_path.insert(0, _LmEvalHook())
    for name, callback in _AFTER_IMPORT.items():
        if name in sys.modules:
            callback(sys.modules[name])
