"""The `shoal` CLI run in the test's process against an in-process node: its Client gets the
node's transport, its URL and token come from the environment, as a user's shell gives
them. ``shoal_runner(...)`` makes ``run(*argv) -> (status, stdout, stderr)``."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from typing import Any

import pytest

from shoal import cli
from shoal.client import Client
from tests.support.inprocess import InProcessNode

Run = Callable[..., tuple[int, str, str]]


def shoal_runner(node: InProcessNode, monkeypatch: pytest.MonkeyPatch,
                 capsys: pytest.CaptureFixture[str], columns: int = 250) -> Run:
    monkeypatch.setattr(cli, "Client", functools.partial(Client, transport=node.transport()))
    monkeypatch.setenv("COLUMNS", str(columns))  # wide tables: cells stay on one line
    monkeypatch.setenv("SHOAL_URL", node.url)
    monkeypatch.setenv("SHOAL_TOKEN", node.admin_token)

    def run(*argv: str) -> tuple[int, str, str]:
        capsys.readouterr()
        try:
            args = cli.parse_args(list(argv))
            status = int(args.func(args))
        except SystemExit as exc:  # argparse refused it
            status = int(exc.code or 0)
        out = capsys.readouterr()
        return status, out.out, out.err

    return run


def json_of(result: tuple[int, str, str]) -> Any:
    """The JSON a successful command printed (--json)."""
    status, out, err = result
    assert status == 0, err
    return json.loads(out)
