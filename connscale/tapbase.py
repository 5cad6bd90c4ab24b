"""What both twistd taps share: option plumbing, config loading, rlimits.

Options only collect strings; `connscale.config` validates them together with
the config file, so a bad value on the command line and a bad key in the file
get the same one-line error. Errors leave through `SystemExit` from
`makeService`, because a `UsageError` makes twistd print its whole help text.
"""

from __future__ import annotations

import os
import sys
from typing import Any, Mapping

from twisted.logger import Logger
from twisted.python import usage

from connscale.config import Config, ConfigError, load_config
from connscale.limits import NofileResult, budget_advice, connection_budget, raise_nofile

log = Logger(namespace="connscale")


class ConfigOptions(usage.Options):
    """Options whose values override config keys (`dotted.key`)."""

    #: option name -> dotted config key
    keys: Mapping[str, str] = {}
    #: options that may be repeated; their values are joined with commas
    repeatable: tuple[str, ...] = ()

    optParameters: list[list[Any]] = [["config", "c", None, "YAML config file (see connscale.yaml)."]]

    def __init__(self) -> None:
        super().__init__()
        self.repeated: dict[str, list[str]] = {}

    def overrides(self) -> dict[str, object]:
        out: dict[str, object] = {}
        for opt, key in self.keys.items():
            if opt in self.repeatable and self.repeated.get(opt):
                out[key] = ",".join(self.repeated[opt])
            elif self.get(opt) is not None:
                out[key] = self[opt]
        return out

    def load(self, prog: str) -> Config:
        try:
            return load_config(self["config"], self.overrides())
        except ConfigError as e:
            # Exit status 2, like a usage error; one line per problem.
            sys.stderr.write(f"{prog}: bad configuration:\n{e}\n")
            raise SystemExit(2) from None


def repeat_option(name: str, doc: str):  # type: ignore[no-untyped-def]
    """An `opt_<name>` method that accumulates repeated values."""

    def opt(self: ConfigOptions, value: str) -> None:
        self.repeated.setdefault(name, []).append(value)

    opt.__doc__ = doc
    return opt


def prepare_fds(wanted: int, prog: str) -> tuple[NofileResult, int]:
    """Raise RLIMIT_NOFILE to the hard limit and log this process's budget."""
    nofile = raise_nofile()
    budget = connection_budget(nofile.soft)
    if nofile.error:
        log.warn("{prog}: could not raise RLIMIT_NOFILE: {error}", prog=prog, error=nofile.error)
    log.info(
        "{prog}: RLIMIT_NOFILE soft={soft} hard={hard}; this process can hold {budget} connections",
        prog=prog,
        soft=nofile.soft,
        hard=nofile.hard,
        budget=budget,
    )
    advice = budget_advice(wanted, budget, nofile.hard)
    if advice:
        log.warn("{prog}: {advice}", prog=prog, advice=advice)
    return nofile, budget


def cpu_count() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else (os.cpu_count() or 1)
