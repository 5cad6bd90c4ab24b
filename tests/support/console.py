"""Reading a console's output: its bytes without terminal escapes, and a reader that waits for a
pattern with a deadline. Shared by the console, hub and multi-host tests."""

from __future__ import annotations

import os
import re
import threading
import time


ANSI = re.compile(rb"\x1b\[[0-9;?]*[ -/]*[@-~]|\x1b[()][A-Za-z0-9]|\x1b[=>EDMc78]")


def clean(data: bytes) -> str:
    return ANSI.sub(b"", data).replace(b"\r", b"").decode("utf-8", "replace")


class Reader:
    """Collects a pipe's output on a thread so the test can wait for a pattern with a deadline."""

    def __init__(self, pipe) -> None:
        self.data = b""
        self.lock = threading.Lock()
        threading.Thread(target=self._pump, args=(pipe,), daemon=True).start()

    def _pump(self, pipe) -> None:
        while chunk := os.read(pipe.fileno(), 65536):
            with self.lock:
                self.data += chunk

    def text(self) -> str:
        with self.lock:
            return clean(self.data)

    def wait_for(self, pattern: str, timeout: float = 5.0) -> re.Match[str]:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if m := re.search(pattern, self.text(), re.M):
                return m
            time.sleep(0.02)
        raise AssertionError(f"no {pattern!r} within {timeout}s in output:\n{self.text()}")
