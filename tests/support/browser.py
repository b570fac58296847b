"""What the browser tests share: Debian's Chromium driven by Playwright (never a downloaded
browser), and a static site of one page on a port of its own: an app's page, on another
origin than the node."""

from __future__ import annotations

import functools
import shutil
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from tests.support.server import free_port

CHROMIUM = shutil.which("chromium") or "/usr/bin/chromium"
MARKS = [
    pytest.mark.browser,
    pytest.mark.skipif(not Path(CHROMIUM).exists(),
                       reason="no Chromium at /usr/bin/chromium (apt-get install chromium); "
                              "Playwright's own browsers are never downloaded"),
]


@contextmanager
def static_site(root: Path, page: str) -> Iterator[int]:
    """``page`` as root/index.html, served on 127.0.0.1: the port."""
    (root / "index.html").write_text(page)

    class Quiet(SimpleHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", free_port()),
                                functools.partial(Quiet, directory=str(root)))
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield httpd.server_address[1]
    finally:
        httpd.shutdown()
        httpd.server_close()


@contextmanager
def chromium() -> Iterator[Any]:
    """A headless Chromium (Playwright's sync API; the caller skips without it)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True)
        try:
            yield browser
        finally:
            browser.close()
