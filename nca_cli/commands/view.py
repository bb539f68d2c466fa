"""``nca view``: a trained NCA live in the browser (``nca_cli.api.view``)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

DESCRIPTION = """\
Run a trained NCA live in the browser. The run is exported as the web page of nca export
--format web (WebGL2, on the GPU) into a temporary folder, served on 127.0.0.1 (a free port,
printed) and opened in the default browser where there is one. Drag on the grid to erase
cells; reset, speed and, for conditional tasks, the condition are on the page. Ctrl-C
stops the server."""

EPILOG = """\
examples:
  nca view --run outputs/train/<run>
  nca view --run outputs/train/<run>/iter_002000.ckpt --port 8000 --no-browser"""


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="nca view",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--run", type=Path, required=True, help="a run folder or a checkpoint file")
    p.add_argument("--port", type=int, default=0, help="the port (default: a free one)")
    p.add_argument(
        "--no-browser", action="store_true", help="only serve; print the address to open"
    )
    return p


def main(argv: list[str]) -> None:
    args = parser().parse_args(argv)
    from nca_cli.api import view
    from nca_cli.config import ConfigError
    from nca_cli.export import ExportError
    from nca_cli.measures import EvalError

    try:
        view(args.run, args.port, not args.no_browser, lambda line: print(line, flush=True))
    except (ConfigError, EvalError, ExportError, OSError) as err:
        print(f"nca view: error: {err}", file=sys.stderr)
        sys.exit(2)
