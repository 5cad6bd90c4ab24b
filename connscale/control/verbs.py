"""The controller's verbs, listed once.

The operator's PB avatar, the console's namespace and `connscale ctl`'s
subcommands are all made from `VERBS`: a verb's name, its parameters (each with
the strict parser that checks it at the boundary), its one-line description,
its short alias and how `ctl` prints its answer. Adding a verb here (and the
Controller method of the same name) gives it to all three.

One spelling everywhere: the console and `ctl` both take a verb's name
(`connections_start`) and its alias (`start`; `client-start` for ctl, whose
subcommands were spelt with a hyphen); both list both in their help.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs

from connscale.records.base import Parse, RecordError, integer, number, text
from connscale.control.errors import ControlError
from connscale.diagnose.fleetcheck import render_fleet
from connscale.metrics.render import CLIENT_COLUMNS, format_table, render_stats

#: Most connections one order may add or remove (more than any machine holds).
MAX_ORDER = 10_000_000
#: Connects per second an order may ask for.
MAX_RATE = 10_000_000.0
#: What an agent (client) name may look like (as client.name in the config): it appears
#: in logs, file names and tables.
NAME_PATTERN = r"[A-Za-z0-9_.-]{1,64}"

agent_name: Parse = text(64, NAME_PATTERN, "a name of letters, digits, '.', '_' or '-' (at most 64)")
count: Parse = integer(0, MAX_ORDER)
rate: Parse = number(0, MAX_RATE, open_low=True)
#: A run's phase becomes a label of the timeline and a table row: short, small alphabet.
phase: Parse = text(32, r"[A-Za-z0-9_:]{0,32}", "a phase of letters, digits, '_' or ':' (at most 32)")


@attrs.frozen
class Param:
    name: str
    parse: Parse
    help: str
    #: May be left out (None): e.g. the client when only one is connected.
    optional: bool = False
    #: On the ctl command line: a positional (False) or an --option (True).
    flag: bool = False
    #: How ctl's argparse converts the command-line text before `parse` checks it.
    cli_type: Callable[[str], Any] = str


@attrs.frozen
class Verb:
    name: str
    params: tuple[Param, ...]
    doc: str
    #: Its other spelling (ctl's short name before the names were one), accepted by ctl and,
    #: where it is a Python name, by the console; "" when it has none.
    alias: str
    #: How ctl prints the answer.
    render: Callable[[Any], str] = str

    @property
    def cli_names(self) -> tuple[str, ...]:
        """What `ctl` accepts: the name, then the alias."""
        return (self.name, self.alias) if self.alias and self.alias != self.name else (self.name,)

    @property
    def console_alias(self) -> str | None:
        """The alias as a console name (None: the same as the name, or not a Python name)."""
        alias = self.alias
        return alias if alias and alias != self.name and alias.isidentifier() else None

    def signature(self) -> str:
        parts = [p.name + ("=None" if p.optional else "") for p in self.params]
        return f"{self.name}({', '.join(parts)})"

    def arguments(self, args: Sequence[Any], kwargs: Mapping[str, Any]) -> tuple[Any, ...]:
        """The checked arguments of one call, in order; ControlError (one line) if they do not fit."""
        if len(args) > len(self.params):
            raise ControlError(f"{self.signature()} takes at most {len(self.params)} arguments, got {len(args)}")
        given: dict[str, Any] = {p.name: a for p, a in zip(self.params, args)}
        names = {p.name for p in self.params}
        for key, value in kwargs.items():
            key = key.decode() if isinstance(key, bytes) else key
            if key not in names:
                raise ControlError(f"{self.signature()}: no argument named {str(key)[:40]!r}")
            if key in given:
                raise ControlError(f"{self.signature()}: {key} given twice")
            given[key] = value
        out: list[object] = []
        for p in self.params:
            value = given.get(p.name)
            if value is None:
                if not p.optional:
                    raise ControlError(f"{self.signature()}: {p.name} is missing")
                out.append(None)
                continue
            try:
                out.append(p.parse(value))
            except RecordError as e:
                raise ControlError(f"{self.name}: {p.name}: {e}") from None
        return tuple(out)

    def python_signature(self) -> inspect.Signature:
        return inspect.Signature([
            inspect.Parameter(p.name, inspect.Parameter.POSITIONAL_OR_KEYWORD,
                              default=None if p.optional else inspect.Parameter.empty)
            for p in self.params
        ])


def _client(help: str = "the client (agent) name; optional when only one is connected") -> Param:
    return Param("client", agent_name, help, optional=True, flag=True)


VERBS: tuple[Verb, ...] = (
    Verb("clients", (), "every agent: connected, host, workers, target and open connections", "clients",
         lambda rows: format_table(rows, CLIENT_COLUMNS)),
    Verb("connections_start", (Param("n", count, "connections to add", cli_type=int), _client()),
         "open n more connections on a client; answers its new target", "start", lambda t: f"target {t}"),
    Verb("connections_stop", (Param("n", count, "connections to close", cli_type=int), _client()),
         "close n connections on a client (most loaded workers first); answers its new target", "stop",
         lambda t: f"target {t}"),
    Verb("count_connections", (_client("a client's established connections (default: the servers' count)"),),
         "connections the servers hold, or one client's established connections", "count"),
    Verb("stats", (), "merged counters, RTT percentiles, failures, clients", "stats", render_stats),
    Verb("prepare", (Param("n", count, "the most connections the client will be asked to hold", cli_type=int),
                     _client()),
         "start the worker processes a client needs to hold n connections, opening none: a ramp's steps "
         "then do not wait for interpreters to start; answers how many workers run", "prepare",
         lambda n: f"{n} workers running"),
    Verb("set_rate", (Param("rate", rate, "connects per second", cli_type=float), _client()),
         "set the connect rate of one client, or of every client", "rate", lambda _: "rate set"),
    Verb("set_phase", (Param("phase", phase, "e.g. ramp:1, hold:1, final_hold, stop"),),
         "name what the run does from now on: every timeline second carries it", "phase", lambda p: f"phase {p}"),
    Verb("client_start", (Param("name", agent_name, "a client under clients: in the config"),),
         "launch the agent of a configured client over ssh; answers once it registered", "client-start",
         lambda name: f"started {name}"),
    Verb("client_stop", (Param("name", agent_name, "the client to stop"),),
         "stop a client: its connections close and its agent exits", "client-stop", lambda _: "stopped"),
    Verb("agent_key", (Param("name", agent_name, "an agent name: the key logs in as that agent only "
                             "(default: any agent name)", optional=True, flag=True),),
         "the secret-file line of an agent key for this hub: it lets an agent register and nothing more",
         "agent-key"),
    Verb("manifest", (Param("client", agent_name, "the agent whose host to describe"),),
         "an agent's host as its manifest says: kernel, CPU, memory, rlimits, sysctls, versions", "manifest",
         lambda m: json.dumps(m, indent=2, sort_keys=True)),
    Verb("check", (Param("target", count, "connections wanted (default: scenario.target)", optional=True,
                         flag=True, cli_type=int),),
         "how many connections the hub's host and every connected agent's host reach together; the limit "
         "that binds first, with its fix", "check", render_fleet),
)

BY_NAME: dict[str, Verb] = {v.name: v for v in VERBS}
#: Every name `ctl` accepts (names and aliases) -> its verb.
BY_CLI: dict[str, Verb] = {name: v for v in VERBS for name in v.cli_names}
#: Every name the console accepts.
CONSOLE_NAMES: dict[str, Verb] = {**BY_NAME, **{v.console_alias: v for v in VERBS if v.console_alias}}


def describe(verb: Verb) -> str:
    """The docstring a console user sees with help(verb)."""
    also = f" (alias: {verb.alias})" if len(verb.cli_names) > 1 else ""
    lines = [f"{verb.signature()}: {verb.doc}{also}."]
    lines += [f"  {p.name}: {p.help}" for p in verb.params]
    return "\n".join(lines)
