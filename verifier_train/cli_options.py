"""Click options generated from a settings dataclass: one option per field made with :func:`option`.

A config declares each setting once, with its command-line details in the field's metadata::

    @dataclass
    class Config:
        data: str = option(help="Input file.", path=True)        # no default: a required option
        lr: float = option(2e-5, "Peak learning rate.")            # --lr FLOAT  [default: 2e-05]
        bf16: bool | None = option(None, "bf16 or fp32.", name="--bf16/--fp32")

    @click.command()
    @click_options(Config)
    def command(**kwargs): ...                                     # kwargs: one per field, by field name

Used by ``llm2 explore`` (:class:`~verifier_train.explore.config.ExploreConfig`) and ``llm2 train-verifier``
(:class:`~verifier_train.train.config.TrainConfig`).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable, Sequence
from typing import Any

import click

#: the metadata key under which :func:`option` stores a field's command-line details
CLI = "cli"


def option(
    default: Any = dataclasses.MISSING,
    help: str | None = None,
    *,
    choices: Sequence[str] | None = None,
    name: str | None = None,
    path: bool = False,
    multiple: bool = False,
    required: bool = False,
    text: str | None = None,
    factory: Callable[[], Any] | None = None,
) -> Any:
    """A dataclass field with its Click option (:func:`click_options` builds the options).

    Args:
        default: the field's default; without one (and without ``factory``) the option is required.
        help: the option's help text.
        choices: the allowed values (``click.Choice``).
        name: the option's name when it is not ``--field-name``; for a bool, ``"--on/--off"`` spells both
            flags (default ``--name/--no-name``).
        path: the value is a file path (``click.Path(dir_okay=False)``).
        multiple: a repeatable option; the command receives a tuple (needs ``factory``).
        required: the option is required even though the field has a default.
        text: the default as typed on the command line, when the field holds it parsed (e.g. ``"0/1"``).
        factory: the field's default factory.

    Returns:
        A :func:`dataclasses.field`.

    Raises:
        ValueError: both ``default`` and ``factory``, or ``multiple`` without ``factory``.
    """
    if factory is not None and default is not dataclasses.MISSING:
        raise ValueError("option: give a default or a factory, not both")
    if multiple and factory is None:
        raise ValueError("option: a multiple option needs a factory (the field holds a collection)")
    cli = {"help": help, "choices": choices, "name": name, "path": path, "multiple": multiple,
           "required": required, "text": text}
    if factory is not None:
        return dataclasses.field(default_factory=factory, metadata={CLI: cli})
    return dataclasses.field(default=default, metadata={CLI: cli})


def _base_type(hint: Any) -> type:
    """``bool``, ``int``, ``float`` or ``str`` from an annotation (``X | None`` counts as ``X``; others: ``str``)."""
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(hint) if a is not type(None)]
        hint = args[0] if len(args) == 1 else None
    return hint if hint in (bool, int, float, str) else str


def _option_args(f: dataclasses.Field, hint: Any) -> tuple[list[str], dict[str, Any]]:
    """The ``click.option`` arguments of one field made with :func:`option`: declarations, keywords."""
    cli = f.metadata[CLI]
    name = cli["name"] or "--" + f.name.replace("_", "-")
    base = _base_type(hint)
    kw: dict[str, Any] = {} if cli["help"] is None else {"help": cli["help"]}
    if cli["choices"]:
        kw["type"] = click.Choice(cli["choices"])
    elif cli["path"]:
        kw["type"] = click.Path(dir_okay=False)
    elif base is not bool:  # a bool is a flag: Click's own type
        kw["type"] = base
    if base is bool and "/" not in name:
        name = f"{name}/--no-{name[2:]}"
    if cli["multiple"]:
        kw["multiple"] = True
    no_default = f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING
    if cli["required"] or no_default:
        kw["required"] = True
    elif not cli["multiple"]:
        kw["default"] = f.default if cli["text"] is None else cli["text"]
        if kw["default"] is not None:
            kw["show_default"] = True
    return [name, f.name], kw


def click_options(config: type) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """A decorator adding one Click option per field of ``config`` made with :func:`option`, in field order.

    Each option: its name (``--field-name`` unless given; a bool as ``--x/--no-x``), help, type (the choices, a
    path, else from the annotation: bool, int, float or str, ``X | None`` as ``X``), default (shown unless None;
    the field's, or its command-line spelling ``text``), required (no default, or ``required``) and multiple.
    The command receives each value under the field's name. Fields made otherwise get no option.

    Args:
        config: a dataclass.

    Returns:
        The decorator.

    Raises:
        TypeError: ``config`` is not a dataclass.
    """
    if not dataclasses.is_dataclass(config):
        raise TypeError(f"click_options: {config!r} is not a dataclass")
    hints = typing.get_type_hints(config)
    args = [_option_args(f, hints[f.name]) for f in dataclasses.fields(config) if CLI in f.metadata]

    def decorate(fn: Callable[..., Any]) -> Callable[..., Any]:
        for decls, kw in reversed(args):  # the options stacked bottom-up, as decorators are
            fn = click.option(*decls, **kw)(fn)
        return fn

    return decorate
