"""A fake /proc tree for the observer's readers: processes, their fds, limits and memory."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

LIMITS_HEAD = "Limit                     Soft Limit           Hard Limit           Units     \n"


def limits_text(nofile: tuple[str, str] = ("1024", "4096")) -> str:
    rows = [("Max cpu time", "unlimited", "unlimited", "seconds"),
            ("Max processes", "96553", "96553", "processes"),
            ("Max open files", nofile[0], nofile[1], "files"),
            ("Max locked memory", "8388608", "8388608", "bytes"),
            ("Max address space", "unlimited", "unlimited", "bytes")]
    return LIMITS_HEAD + "".join(f"{n:<26}{s:<21}{h:<21}{u:<10}\n" for n, s, h, u in rows)


class FakeProc:
    def __init__(self, root: Path) -> None:
        self.root = root
        root.mkdir(parents=True, exist_ok=True)
        (root / "self").mkdir(exist_ok=True)

    def add(self, pid: int, comm: str, ppid: int = 1, start: int = 1000, rss_pages: int = 100,
            utime: int = 50, stime: int = 25, threads: int = 1, nofile: tuple[str, str] = ("1024", "4096"),
            pss_kb: int | None = 300, sockets: tuple[int, ...] = (), files: int = 3,
            argv0: str | None = None) -> Path:
        d = self.root / str(pid)
        if d.exists():
            shutil.rmtree(d)
        d.mkdir()
        # Fields after the command name, as the kernel writes them (state first).
        after = ["S", str(ppid)] + ["0"] * 9 + [str(utime), str(stime)] + ["0"] * 4 + [str(threads), "0",
                                                                                      str(start), "0",
                                                                                      str(rss_pages)]
        (d / "stat").write_text(f"{pid} ({comm}) " + " ".join(after) + " 0 0 0\n")
        (d / "limits").write_text(limits_text(nofile))
        if pss_kb is not None:
            (d / "smaps_rollup").write_text(f"00400000-7ffd [rollup]\nRss:     {rss_pages * 4} kB\n"
                                            f"Pss:     {pss_kb} kB\n")
        (d / "cmdline").write_bytes((argv0 or comm).encode() + b"\0--flag\0")
        fd = d / "fd"
        fd.mkdir()
        for i in range(files):
            os.symlink("/dev/null", fd / str(i))
        for n, inode in enumerate(sockets, start=files):
            os.symlink(f"socket:[{inode}]", fd / str(n))
        return d

    def remove(self, pid: int) -> None:
        shutil.rmtree(self.root / str(pid))
