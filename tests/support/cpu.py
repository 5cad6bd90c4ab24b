"""Starving one of our processes of CPU with a cgroup (v1) quota, relative to what it needs.

A fixed quota ("3 % of a core") starves a worker only on a machine where the worker
needs more than that: on a fast one it does not notice and the test waits in vain.
So the quota is a share of the CPU the process was seen to use, and the caller is
told when the kernel has actually throttled it.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Iterator
from pathlib import Path

CGROUP_CPU = Path("/sys/fs/cgroup/cpu")
#: The kernel's bounds for cfs_quota_us and cfs_period_us.
MIN_QUOTA_US = 1000
MAX_PERIOD_US = 1_000_000


def cgroup_v1_cpu() -> bool:
    return os.geteuid() == 0 and (CGROUP_CPU / "cpu.cfs_quota_us").exists()


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def cpu_share(pid: int, seconds: float = 2.0) -> float:
    """Cores the process uses, measured over `seconds`."""
    t0, c0 = time.monotonic(), cpu_seconds(pid)
    time.sleep(seconds)
    return (cpu_seconds(pid) - c0) / (time.monotonic() - t0)


def quota_for(share: float) -> tuple[int, int]:
    """(quota_us, period_us) giving `share` of a core, within the kernel's bounds
    (at least 1 ms a period, a period of at most 1 s: 0.1 % of a core at the least)."""
    share = max(share, MIN_QUOTA_US / MAX_PERIOD_US)
    period = min(MAX_PERIOD_US, max(100_000, int(MIN_QUOTA_US / share) + 1))
    return max(MIN_QUOTA_US, int(share * period)), period


@contextlib.contextmanager
def starved(pid: int, of_need: float = 0.2, sample_s: float = 2.0) -> Iterator[dict[str, float]]:
    """Put `pid` (ours) in a cgroup allowed `of_need` of the CPU it used over `sample_s`;
    yields what was measured and set once the kernel has throttled it; moves it back after."""
    need = cpu_share(pid, sample_s)
    quota, period = quota_for(need * of_need)
    group = CGROUP_CPU / f"connscale-test-{os.getpid()}-{pid}"
    group.mkdir()
    try:
        (group / "cpu.cfs_period_us").write_text(str(period))
        (group / "cpu.cfs_quota_us").write_text(str(quota))
        (group / "tasks").write_text(str(pid))
        deadline = time.monotonic() + 10 + 3 * period / 1e6
        while throttled(group) == 0:
            if time.monotonic() > deadline:
                raise AssertionError(f"pid {pid} was never throttled (it used {need:.3f} cores; quota "
                                     f"{quota} us per {period} us)")
            time.sleep(0.1)
        yield {"need": need, "quota_us": quota, "period_us": period}
    finally:
        with contextlib.suppress(OSError):
            (CGROUP_CPU / "tasks").write_text(str(pid))
        deadline = time.monotonic() + 5
        while time.monotonic() < deadline:
            try:
                group.rmdir()
                break
            except OSError:
                time.sleep(0.1)


def throttled(group: Path) -> int:
    for line in (group / "cpu.stat").read_text().splitlines():
        name, _, value = line.partition(" ")
        if name == "nr_throttled":
            return int(value)
    return 0
