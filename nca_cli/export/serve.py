"""``nca view``'s server: a folder on 127.0.0.1, on a free port unless one is asked for."""

from __future__ import annotations

import functools
import webbrowser
from collections.abc import Callable
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any


class _QuietHandler(SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:
        """No line per request: the terminal shows the address and the stop hint only."""


def serve_folder(
    folder: Path, port: int, open_browser: bool, announce: Callable[[str], None]
) -> None:
    """Serve ``folder`` until interrupted (KeyboardInterrupt, as Ctrl-C raises); open the
    page in the default browser where there is one."""
    handler = functools.partial(_QuietHandler, directory=str(folder))
    with ThreadingHTTPServer(("127.0.0.1", port), handler) as server:
        url = f"http://127.0.0.1:{server.server_address[1]}/index.html"
        announce(f"serving {url} (Ctrl-C stops)")
        if open_browser:
            try:
                webbrowser.get().open(url)
            except webbrowser.Error:
                announce("no browser found here: open the address in one")
        try:
            server.serve_forever(poll_interval=0.2)
        except KeyboardInterrupt:
            announce("stopped")
