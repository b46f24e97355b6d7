"""Every `skipdecode bench` subcommand parses and runs its own module's entry point."""

from __future__ import annotations

import importlib

import pytest

from skipdecode.benchmarks.cli import COMMANDS
from skipdecode.cli import build_parser

REQUIRED = {  # the least each subcommand needs to parse
    "serve": ["--base-url", "http://127.0.0.1:1"],
    "failover": ["--base-url", "http://127.0.0.1:1"],
}


@pytest.mark.parametrize("name", sorted(COMMANDS))
def test_each_subcommand_dispatches_to_its_module(name):
    args = build_parser().parse_args(["bench", name, *REQUIRED.get(name, [])])
    module = importlib.import_module(f"skipdecode.benchmarks.{COMMANDS[name][0]}")
    assert args.func is module.run


def test_failover_refuses_a_remote_server():
    args = build_parser().parse_args(["bench", "failover", "--base-url", "http://10.0.0.1:8000"])
    with pytest.raises(ValueError, match="base-url"):
        args.func(args)
