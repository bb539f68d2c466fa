"""Ctrl-C and SIGTERM during training: a flag the loop checks, so a run stops at a safe
point with its checkpoint written, and a second signal quits at once.

It imports nothing heavy, so a command installs it before importing torch: a
KeyboardInterrupt raised inside an import or a library call (torch, OmegaConf) can leave
that library half set up and surface as an unrelated error.
"""

from __future__ import annotations

import logging
import os
import signal
import socket
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

log = logging.getLogger(__name__)


class Interrupted(RuntimeError):
    """Training stopped on SIGINT or SIGTERM after saving a checkpoint."""


@contextmanager
def stop_requests(run_dir: Path) -> Iterator[threading.Event]:
    """First SIGINT/SIGTERM sets the flag this yields; a second one quits at once.

    Python runs signal handlers only between bytecodes, so a second Ctrl-C during a long
    backward pass would wait for it; a watcher thread reads the signal numbers that the C
    handler writes to a wake-up socket and exits the process straight away (the checkpoint
    on disk stays intact: it is only ever replaced by a complete file).
    """
    stop = threading.Event()
    if threading.current_thread() is not threading.main_thread():
        yield stop
        return
    stopping = (signal.SIGINT, signal.SIGTERM)
    seen = [0]
    lock = threading.Lock()

    def count(signum: int) -> None:
        with lock:
            seen[0] += 1
            again = seen[0] >= 2
        if again:
            os.write(
                2,
                f"\nnca: interrupted again: quitting at once. The last checkpoint is kept; "
                f"resume with: nca train resume={run_dir}\n".encode(),
            )
            os._exit(128 + signum)

    def handler(signum: int, frame: object) -> None:
        if not stop.is_set():
            stop.set()
            log.warning("stopping at the end of this step (press Ctrl-C again to quit at once)")

    reader, writer = socket.socketpair()
    writer.setblocking(False)

    def watch() -> None:
        while data := reader.recv(64):
            for signum in data:
                if signum in stopping:
                    count(signum)

    previous = {s: signal.getsignal(s) for s in stopping}
    for s in stopping:
        signal.signal(s, handler)
    old_fd = signal.set_wakeup_fd(writer.fileno(), warn_on_full_buffer=False)
    watcher = threading.Thread(target=watch, name="nca-signals", daemon=True)
    watcher.start()
    try:
        yield stop
    finally:
        signal.set_wakeup_fd(old_fd)
        for s, h in previous.items():
            signal.signal(s, h)
        writer.close()
        watcher.join()
        reader.close()
