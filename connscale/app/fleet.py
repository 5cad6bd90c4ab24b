"""The fleet of `connscale run`: which agents, how each starts, what each is asked to hold.

A run's agents are the hosts under `clients:` (the hub launches each over ssh,
`client_start`), the agents `scenario.agents` names (already registered with the
hub, waited for), and the local agent when `scenario.local_agent` says so (by
default only when there is no other). Everything here happens before the first
connect: an agent that cannot be started is said in one line (which, and why),
the target is split by what each agent's host reaches (the hub's fleet check,
`diagnose.fleetcheck.split`), and each host's manifest lands in the run directory.
The parts talk to the hub through `call(verb, *args)` only, so they are tested
with a fake hub.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
from twisted.internet import defer

from connscale.app.scenario import RunError
from connscale.config.settings import Config
from connscale.diagnose.fleetcheck import FleetCheck, render_split, split
from connscale.diagnose.records import AgentShare

#: The local agent's name.
LOCAL = "local"
#: The run's own host's manifest, and each agent's beside it.
AGENT_MANIFEST = "manifest-{}.json"

Call = Callable[..., "defer.Deferred[Any]"]


@attrs.frozen
class Members:
    """Who runs the load: agents launched over ssh, agents named, and whether the local one."""

    launched: tuple[str, ...] = ()
    named: tuple[str, ...] = ()
    local: bool = True

    @property
    def names(self) -> tuple[str, ...]:
        return (*((LOCAL,) if self.local else ()), *self.launched, *self.named)

    @property
    def remote(self) -> bool:
        """Any agent not on this host: the run's preflight judges this host as the server's only."""
        return bool(self.launched or self.named)


def members(cfg: Config) -> Members:
    """The fleet the config names (`clients:` entries with `observe:` start observers, not agents)."""
    launched = tuple(name for name, host in cfg.clients.items() if not host.observe)
    named = tuple(cfg.scenario.agents)
    local = cfg.scenario.local_agent
    if local is None:
        local = not launched and not named
    return Members(launched=launched, named=named, local=local)


def local_only(cfg: Config) -> tuple[str, ...]:
    """The settings of `cfg` only the local agent can follow: a remote agent has no config file,
    and the hub hands it the line settings alone (`launch.run_flags`), not a profile's options,
    a URL's password (which a command line would show to every user there) or TLS (it would
    speak plain TCP to a TLS server, and a CA file named here is not on its host)."""
    keys = []
    if cfg.client.url is not None:
        keys.append("client.url")
    elif cfg.client.effective_protocol() not in ("line", "raw"):
        keys.append(f"client.protocol {cfg.client.effective_protocol()}")
    keys += [key for key, on in (("server.tls", cfg.server.tls.enabled), ("client.tls", cfg.client.tls.enabled)) if on]
    return tuple(keys)


def observers(cfg: Config) -> tuple[str, ...]:
    """`clients:` entries with `observe:`: observers of the server, launched like agents."""
    return tuple(name for name, host in cfg.clients.items() if host.observe)


@defer.inlineCallbacks
def launch(call: Call, names: Sequence[str], say: Callable[[str], None]):
    """`client_start` for every name at once; a RunError naming each that could not start
    (each said first in one line of its own: which, and why)."""
    if not names:
        return
    results = yield defer.DeferredList([call("client_start", name) for name in names], consumeErrors=True)
    failed = []
    for name, (ok, value) in zip(names, results):
        if ok:
            say(f"agent {name}: started over ssh")
            continue
        why = _one_line(value)
        say(f"agent {name}: cannot start: {why}")
        failed.append(name)
    if failed:
        raise RunError(f"{len(failed)} of {len(names)} agents could not be started ({', '.join(failed)}); "
                       "nothing was connected")


def _one_line(failure: Any) -> str:
    text = failure.getErrorMessage() if hasattr(failure, "getErrorMessage") else str(failure)
    lines = [line for line in str(text).strip().splitlines() if line.strip()]
    return lines[-1] if lines else repr(failure)


@defer.inlineCallbacks
def plan(call: Call, names: Sequence[str], target: int, force: bool,
         say: Callable[[str], None]):
    """The hub's fleet check, and the target split across `names` by what each host reaches;
    said one line per agent. Refused (RunError) when the fleet reaches less than the target,
    unless `force` (then each agent is asked for what its host reaches)."""
    check = FleetCheck.from_wire((yield call("check", target)))
    hosts = {h.name: h for h in check.client_hosts()}
    missing = [name for name in names if name not in hosts]
    if missing:
        raise RunError(f"the hub's check has no limits of {', '.join(missing)}")
    shares = split(target, [hosts[name] for name in names])
    say(f"split of {target:,} connections by what each host reaches:")
    for line in render_split(shares, target):
        say(f"  {line}")
    reachable = min(check.reachable, sum(s.share for s in shares))
    if reachable < target:
        b = check.binding
        why = (f"{b.limit.key} on {b.host} binds first: {b.limit.detail}; fix: {b.limit.fix}"
               if b is not None and b.limit is not None else "")
        if not force:
            raise RunError(f"preflight: the fleet reaches {reachable:,} of {target:,} connections"
                           + (f" ({why})" if why else "") + "; run anyway with --force")
        say(f"--force: running although the fleet reaches {reachable:,} of {target:,}")
    return check, shares


@defer.inlineCallbacks
def manifests(call: Call, names: Sequence[str],
              write: Callable[[str, Any], Any], say: Callable[[str], None]):
    """Each agent's host manifest, written beside the run's own; name -> file. An agent that
    cannot send one is said and left out (a manifest never stops a run)."""
    out: dict[str, str] = {}
    results = yield defer.DeferredList([call("manifest", name) for name in names], consumeErrors=True)
    for name, (ok, value) in zip(names, results):
        if not ok:
            say(f"agent {name}: no manifest: {_one_line(value)}")
            continue
        file = AGENT_MANIFEST.format(name)
        try:
            write(file, value)
        except Exception as e:  # RunDirError: the summary says what we have
            say(f"agent {name}: manifest not written: {e}")
            continue
        out[name] = file
    return out


def shares_of(shares: Sequence[AgentShare]) -> Mapping[str, int]:
    return {s.agent: s.share for s in shares}
