"""The Python examples in docs/quickstart.md run, as written, against a real node."""

from __future__ import annotations

import re
from pathlib import Path

from tests.support.server import ServerProcess

QUICKSTART = Path(__file__).resolve().parents[2] / "docs" / "quickstart.md"


def test_quickstart_python_examples_run(server: ServerProcess) -> None:
    blocks = re.findall(r"```python\n(.*?)```", QUICKSTART.read_text(), re.S)
    assert len(blocks) >= 2
    scope: dict[str, object] = {"token": server.admin_token}
    for block in blocks:
        exec(block.replace("http://127.0.0.1:8080", server.url), scope)
    # the webhook receiver's inbox holds the two changes, once each, in commit order
    inbox = scope["inbox"].execute(  # type: ignore[attr-defined]
        "SELECT json_extract(event, '$.op'), json_extract(event, '$.table') FROM inbox "
        "ORDER BY rowid").fetchall()
    assert inbox == [("insert", "p"), ("delete", "p")], inbox
