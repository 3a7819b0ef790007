"""verifier_train.cli_options: Click options generated from a settings dataclass."""

from __future__ import annotations

import json
from dataclasses import dataclass

import click
import pytest
from click.testing import CliRunner

from verifier_train.cli_options import click_options, option


@dataclass
class _Config:
    model: str = option(help="Model.")  # no default: required
    data: list[str] = option(help="Input files.", factory=list, multiple=True, required=True, path=True)  # noqa: RUF009
    output: str = option("", "Output directory.", required=True)
    mode: str = option("a", "Mode.", choices=("a", "b"))
    lr: float = option(0.5, "Learning rate.")
    limit: int | None = option(None, "At most N.")
    verbose: bool = option(False, "Talk.")
    bf16: bool | None = option(None, "Precision.", name="--bf16/--fp32")
    shard: tuple[int, int] = option((0, 1), "i/N.", text="0/1")
    data_format: str = option("auto", name="--format")
    hidden: int = 3  # not an option


@click.command()
@click_options(_Config)
def _command(**kwargs):
    click.echo(json.dumps(kwargs))


def _run(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(_command, ["--data", "x", "--model", "m", "--output", "o", *args])
    return result.exit_code, result.output


def test_options_follow_the_fields():
    params = {p.name: p for p in _command.params}
    assert list(params) == ["model", "data", "output", "mode", "lr", "limit", "verbose", "bf16", "shard",
                            "data_format"]  # field order; a plain field gets no option
    assert params["verbose"].opts == ["--verbose"] and params["verbose"].secondary_opts == ["--no-verbose"]
    assert params["bf16"].opts == ["--bf16"] and params["bf16"].secondary_opts == ["--fp32"]
    assert params["data_format"].opts == ["--format"]
    assert [n for n, p in params.items() if p.required] == ["model", "data", "output"]
    assert params["data"].multiple and isinstance(params["data"].type, click.Path)
    assert params["lr"].type is click.FLOAT and params["limit"].type is click.INT
    assert params["shard"].default == "0/1" and params["shard"].type is click.STRING
    assert params["lr"].show_default and not params["limit"].show_default


def test_parsing():
    code, out = _run()
    assert code == 0, out
    assert json.loads(out) == {"model": "m", "data": ["x"], "output": "o", "mode": "a", "lr": 0.5, "limit": None,
                               "verbose": False, "bf16": None, "shard": "0/1", "data_format": "auto"}
    code, out = _run("--data", "y", "--mode", "b", "--lr", "2", "--limit", "4", "--verbose", "--fp32",
                     "--format", "math")
    assert code == 0, out
    got = json.loads(out)
    assert got["data"] == ["x", "y"] and got["mode"] == "b" and got["lr"] == 2.0 and got["limit"] == 4
    assert got["verbose"] is True and got["bf16"] is False and got["data_format"] == "math"


@pytest.mark.parametrize("args, message", [
    (["--mode", "c"], "'c' is not one of 'a', 'b'"),
    (["--lr", "fast"], "'fast' is not a valid float"),
])
def test_bad_values_are_refused(args, message):
    code, out = _run(*args)
    assert code == 2 and message in out


def test_required_options():
    result = CliRunner().invoke(_command, ["--data", "x", "--model", "m"])  # --output has a field default only
    assert result.exit_code == 2 and "Missing option '--output'" in result.output


def test_help_shows_defaults():
    out = CliRunner().invoke(_command, ["--help"]).output
    assert "--verbose / --no-verbose" in out and "--bf16 / --fp32" in out
    assert "[default: 0/1]" in out and "[default: 0.5]" in out and "[required]" in out


def test_misuse_is_refused():
    with pytest.raises(TypeError, match="not a dataclass"):
        click_options(dict)
    with pytest.raises(ValueError, match="not both"):
        option(1, factory=list)
    with pytest.raises(ValueError, match="needs a factory"):
        option(multiple=True)
