"""What every command shares at start-up: option plumbing and config loading.

Options only collect strings; `connscale.config.loader` validates them together with
the config file, so a bad value on the command line and a bad key in the file
get the same one-line error. Errors leave through `SystemExit` from
`makeService`, because a `UsageError` makes twistd print its whole help text.
"""

from __future__ import annotations

import re
import sys
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, Mapping

import attrs
from twisted.logger import Logger
from twisted.python import usage

from connscale.config.loader import ConfigError, load_config
from connscale.config.settings import Config
from connscale.control.errors import StartError
from connscale.net import fastpath

log = Logger(namespace="connscale")

#: Exit statuses of every command (`ctl` uses all of them).
EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_AUTH = 0, 1, 2, 3, 4


def load_or_exit(prog: str, path: str | None, overrides: Mapping[str, object] | None = None) -> Config:
    """The configuration, or exit 2 with one line per problem (like a usage error).

    CONNSCALE_FAST_PATH, when set, is applied here to `net.fast_path` (once, for
    every command), so the config a run records is the one it ran with."""
    try:
        cfg = load_config(path, overrides or {})
        fast_path = fastpath.enabled(cfg.net.fast_path)
    except ConfigError as e:
        sys.stderr.write(f"{prog}: bad configuration:\n{e}\n")
        raise SystemExit(EXIT_USAGE) from None
    except fastpath.FastPathError as e:
        sys.stderr.write(f"{prog}: bad configuration:\n{e}\n")
        raise SystemExit(EXIT_USAGE) from None
    if fast_path != cfg.net.fast_path:
        cfg = attrs.evolve(cfg, net=attrs.evolve(cfg.net, fast_path=fast_path))
    return cfg


#: The config key an option's help ends with: "Connects per second [client.rate, default 2000]."
KEY_IN_HELP = re.compile(r"\[([a-z_]+(?:\.[a-z_]+)+)[,\]]")


def keys_in_help(parameters: Iterable[Sequence[Any]], methods: Mapping[str, object]) -> dict[str, str]:
    """option name -> the dotted config key its help names (`optParameters` rows, `opt_*` methods).

    The help is where a user reads which key an option sets: made from it, the table
    cannot say one key while the help says another. An alias (`opt_p = opt_port`) is its
    long name's option, not one of its own."""
    keys: dict[str, str] = {}
    for name, _short, _default, doc, *_ in parameters:
        if found := KEY_IN_HELP.search(doc or ""):
            keys[name] = found.group(1)
    seen: set[int] = set()
    for attr, method in methods.items():
        if attr.startswith("opt_") and callable(method) and id(method) not in seen:
            seen.add(id(method))
            if found := KEY_IN_HELP.search(method.__doc__ or ""):
                keys[attr[len("opt_"):].replace("_", "-")] = found.group(1)
    return keys


class ConfigOptions(usage.Options):
    """Options whose values override config keys (`dotted.key`): an option sets the key its
    help names in brackets ("... [client.rate, default 2000].")."""

    #: option name -> dotted config key, made from the help of each subclass's options.
    # Options is a dict, so this shadows dict.keys(); nothing calls that on options (renaming it is not
    # a typing change).
    keys: Mapping[str, str] = {}  # type: ignore[assignment]
    #: options that may be repeated; their values are joined with commas
    repeatable: tuple[str, ...] = ()

    optParameters: list[list[Any]] = [["config", "c", None, "YAML config file (see connscale.yaml)."]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        cls.keys = keys_in_help(cls.optParameters, vars(cls))

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
        return load_or_exit(prog, self["config"], self.overrides())


def repeat_option(name: str, doc: str):
    """An `opt_<name>` method that accumulates repeated values."""

    def opt(self: ConfigOptions, value: str) -> None:
        self.repeated.setdefault(name, []).append(value)

    opt.__doc__ = doc
    return opt


@contextmanager
def startup_errors(prog: str) -> Iterator[None]:
    """Every start-up error of a command leaves as one line on stderr and exit status 2.

    The control layer raises `StartError("what went wrong")` (one line), which leaves as
    "prog: what went wrong"; a tap's own `SystemExit("prog: ...")` leaves as it is (Python
    would print it and exit 1). Scripts tell a bad start (2) from a run that failed.
    """
    try:
        yield
    except StartError as e:
        sys.stderr.write(f"{prog}: {e}\n")
        sys.stderr.flush()
        raise SystemExit(EXIT_USAGE) from None
    except SystemExit as e:
        if isinstance(e.code, str):
            sys.stderr.write(e.code.rstrip("\n") + "\n")
            sys.stderr.flush()
            raise SystemExit(EXIT_USAGE) from None
        raise
