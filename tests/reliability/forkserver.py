"""A fork server for the kill tests: it imports nca once, then runs every ``nca`` command
line it reads (one JSON request a line on stdin) in a forked child process, answering with
the child's pid and, when the child has ended, its exit status (negative: killed by that
signal). The children are real nca processes running the real command-line code; the
fork only saves the seconds that importing torch costs, so that a test can SIGKILL nca at
many random moments quickly.

Request: ``{"argv": [...], "cwd": ..., "env": {...}, "log": <file for stdout and stderr>}``.
"""

from __future__ import annotations

import json
import os
import signal
import sys
import traceback

import hydra  # noqa: F401  (the slow imports, done once)
import imageio.v3  # noqa: F401
import torch._dynamo  # noqa: F401  (the optimisers import it at their first step)
from PIL import Image

import nca_cli.cli
import nca_cli.commands.train
import nca_cli.tasks.growing
import nca_cli.training.trainer

Image.init()  # PIL's plugins


def child(request: dict) -> int:
    """Run one command line as ``nca`` would; returns its exit status."""
    signal.signal(signal.SIGINT, signal.default_int_handler)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    os.environ.update(request.get("env", {}))
    os.chdir(request["cwd"])
    log = os.open(request["log"], os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    os.dup2(log, 1)
    os.dup2(log, 2)
    sys.argv = ["nca", *request["argv"]]
    try:
        nca_cli.cli.main(request["argv"])
    except SystemExit as stop:
        return stop.code if isinstance(stop.code, int) else (0 if stop.code is None else 1)
    except BaseException:
        traceback.print_exc()
        return 1
    return 0


def serve() -> None:
    for line in sys.stdin:
        request = json.loads(line)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                code = child(request)
            finally:
                sys.stdout.flush()
                sys.stderr.flush()
                os._exit(code)
        print(json.dumps({"pid": pid}), flush=True)
        _, status = os.waitpid(pid, 0)
        print(json.dumps({"status": os.waitstatus_to_exitcode(status)}), flush=True)


if __name__ == "__main__":
    serve()
