"""The operator console: a Python manhole served by the hub, over SSH.

The operator gets the hub's verbs (``client_start(...)``, ``stats()``, ...) in a live
interpreter. Verbs usually answer with a Deferred (the work happens on remote agents), so
results are converted to ``Readable`` objects whose repr is an aligned table instead of a
one-line dict, and the interpreter prints already-fired Deferreds as their result.

SSH accepts exactly one user, authenticated by the keys of the console's own authorized_keys
file (`control.console_keys`, no passwords): the console is off until that key is set, and
it warns when it listens beyond loopback. There is no telnet console any more: a console
without authentication runs Python sent by any local program, and a web page in a
browser on that host can send it an HTTP POST.
"""

from __future__ import annotations

import functools
import inspect
import os
import pprint
import pydoc
import struct
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from twisted.application import service
from twisted.conch import manhole, manhole_ssh
from twisted.conch.checkers import InMemorySSHKeyDB, SSHPublicKeyChecker
from twisted.conch.insults import insults
from twisted.conch.interfaces import IConchUser
from twisted.conch.ssh import keys
from twisted.cred.portal import Portal
from twisted.internet import defer, protocol
from twisted.logger import Logger
from twisted.python.failure import Failure

from connscale.compat.manhole import ResultShapingInterpreter
from connscale.config.endpoints import binds_loopback
from connscale.metrics.render import cell, format_table, is_scalar
from connscale.net.listen import EndpointService

if TYPE_CHECKING:
    from connscale.config.settings import ControlSettings

__all__ = ["ConsoleError", "ConsoleService", "Readable", "make_console", "wrap_namespace"]

log = Logger(namespace="connscale.console")

HOST_KEY_NAME = "console_host_key"


class ConsoleError(Exception):
    """The console cannot be set up; ``str()`` is one line saying what to fix."""


# ---------------------------------------------------------------- readable results

class Readable:
    """A result shown in the manhole as plain text (a table, aligned key/values, ...).

    ``.value`` keeps the original object, and indexing/iteration/len go to it, so
    ``stats()["open"]`` still works on a synchronous result.
    """

    def __init__(self, value: object, text: str | None = None) -> None:
        self.value = value
        self.text = format_value(value) if text is None else text

    def __repr__(self) -> str:
        return self.text

    __str__ = __repr__

    def __getitem__(self, key: Any) -> Any:
        return self.value[key]  # type: ignore[index]

    def __iter__(self) -> Any:
        return iter(self.value)  # type: ignore[call-overload]

    def __len__(self) -> int:
        return len(self.value)  # type: ignore[arg-type]

    def __contains__(self, item: object) -> bool:
        return item in self.value  # type: ignore[operator]


def format_value(value: object) -> str:
    """Plain multi-line text for a verb's result: tables for records, aligned key/values."""
    if isinstance(value, str):
        return value
    if isinstance(value, Mapping):
        if not value:
            return "(empty)"
        if all(isinstance(v, Mapping) for v in value.values()):
            return format_table(list(value.values()), names=list(value.keys()), empty="(empty)")
        width = max(len(str(k)) for k in value)
        lines = []
        for key, item in value.items():
            if is_scalar(item) or isinstance(item, (list, tuple)) and all(map(is_scalar, item)):
                lines.append(f"{str(key).ljust(width)}  {cell(item)}".rstrip())
            else:
                nested = format_value(item).replace("\n", "\n    ")
                lines.append(f"{key}:\n    {nested}")
        return "\n".join(lines)
    if isinstance(value, (list, tuple)):
        if not value:
            return "(empty)"
        if all(isinstance(v, Mapping) for v in value):
            return format_table(value, empty="(empty)")
        return "\n".join(cell(v) if is_scalar(v) else pprint.pformat(v, width=100) for v in value)
    return pprint.pformat(value, width=100, sort_dicts=False)


def _readable(value: object) -> object:
    # Scalars already have a readable repr; None must stay None so nothing is printed.
    if isinstance(value, (str, Mapping, list, tuple)) and not isinstance(value, Readable):
        return Readable(value)
    return value


def _is_verb(value: object) -> bool:
    # Classes are callable too, but wrapping one would break isinstance() in the console.
    return callable(value) and not isinstance(value, type)


def _wrap(func: Callable[..., Any]) -> Callable[..., Any]:
    @functools.wraps(func)
    def verb(*args: Any, **kwargs: Any) -> Any:
        result = func(*args, **kwargs)
        if isinstance(result, defer.Deferred):
            return result.addCallback(_readable)
        return _readable(result)

    return verb


def _first_line(func: Callable[..., Any]) -> str:
    doc = inspect.getdoc(func) or ""
    return doc.strip().splitlines()[0] if doc.strip() else "(no description)"


def _signature(name: str, func: Callable[..., Any]) -> str:
    try:
        return f"{name}{inspect.signature(func)}"
    except (TypeError, ValueError):  # some builtins have no introspectable signature
        return f"{name}(...)"


class _Help(Readable):
    """``help`` lists the verbs; ``help(verb)`` shows one verb's whole docstring."""

    def __init__(self, verbs: Mapping[str, Callable[..., Any]]) -> None:
        self.verbs = dict(verbs)
        heads = {name: _signature(name, f) for name, f in sorted(self.verbs.items())}
        width = max((len(h) for h in heads.values()), default=0)
        lines = ["connscale console verbs:"]
        lines += [f"  {head.ljust(width)}  {_first_line(self.verbs[name])}"
                  for name, head in heads.items()]
        lines += ["A verb answering later prints as <Deferred #N>, then its result when it arrives;",
                  "help(verb) shows a verb's full description. Ctrl-D leaves the console."]
        super().__init__(self.verbs, "\n".join(lines))

    def __call__(self, what: object = None) -> Readable:
        if what is None:
            return self
        if isinstance(what, str) and what in self.verbs:
            what = self.verbs[what]
        for name, func in self.verbs.items():
            if what is func or getattr(what, "__wrapped__", None) is func:
                doc = inspect.getdoc(func) or "(no description)"
                return Readable(doc, f"{_signature(name, func)}\n\n{doc}")
        # Never builtins.help(): its pager would block the reactor waiting on a real tty.
        try:
            # typeshed leaves out pydoc.plaintext, the module's own plain-text renderer.
            return Readable(what, pydoc.render_doc(what, renderer=pydoc.plaintext))  # type: ignore[attr-defined]
        except Exception as e:  # e.g. help("nosuchname") tries to import it
            return Readable(what, f"no help for {what!r}: {e}")


def wrap_namespace(funcs: Mapping[str, object]) -> dict[str, object]:
    """The console namespace: callables wrapped so results print readably, plus ``help``.

    A wrapped callable returns what the original returns, except that dicts, lists and
    strings (directly or as a Deferred's result) become ``Readable``. Non-callables pass
    through unchanged. ``help`` is added unless ``funcs`` already has one.
    """
    namespace: dict[str, object] = {}
    verbs: dict[str, Callable[..., Any]] = {}
    for name, value in funcs.items():
        if _is_verb(value) and not name.startswith("_"):
            namespace[name] = _wrap(value)  # type: ignore[arg-type]
            verbs[name] = value  # type: ignore[assignment]
        else:
            namespace[name] = value
    namespace.setdefault("help", _Help(verbs))
    return namespace


class _ConsoleInterpreter(ResultShapingInterpreter):
    def displayhook(self, obj: object) -> None:
        # Stock manhole prints a fired Deferred as "<Deferred at 0x.. current result: ..>";
        # the operator wants the result itself.
        if (isinstance(obj, defer.Deferred) and obj.called and not obj.paused
                and not isinstance(getattr(obj, "result", None), (Failure, defer.Deferred))):
            obj = obj.result
        super().displayhook(obj)

    def shown(self, result: object) -> object:
        # A table must start on its own line, not after "Deferred #N called back: ".
        if isinstance(result, Readable) and "\n" in result.text:
            return Readable(result.value, "\n" + result.text)
        return result


class _ConsoleManhole(manhole.ColoredManhole):
    def connectionMade(self) -> None:
        super().connectionMade()
        self.interpreter = _ConsoleInterpreter(self, self.namespace)


# ---------------------------------------------------------------- ssh

class _Pipe:
    """The minimal transport each side of the SSH channel <-> terminal splice needs."""

    def __init__(self, write: Callable[[bytes], object], close: Callable[[], object]) -> None:
        self.write = write
        self.loseConnection = close


class _ConsoleSession(manhole_ssh.TerminalSession):
    # Without a pty request (plain `ssh host`) getPty never sets these.
    width, height = 80, 24
    _terminal: insults.ServerProtocol | None = None

    def openShell(self, proto: Any) -> None:
        # TerminalSessionTransport's splice, except leaving sends exit-status 0 first:
        # without it OpenSSH's client exits 255 ("error") after every normal Ctrl-D.
        channel = proto.session
        conn = IConchUser(self.original).conn

        def close_channel() -> None:
            conn.sendRequest(channel, b"exit-status", struct.pack(">L", 0))
            conn.sendClose(channel)

        terminal = self.chainedProtocolFactory()
        proto.makeConnection(_Pipe(terminal.dataReceived, close_channel))
        terminal.makeConnection(_Pipe(proto.write, proto.loseConnection))
        # Set by makeConnection just above; Twisted declares it `= None`, unannotated, so mypy types it None.
        terminal.terminalProtocol.terminalSize(self.width, self.height)  # type: ignore[attr-defined]
        self._terminal = terminal

    def getPty(self, term: bytes, windowSize: tuple[int, ...], attrs: object) -> None:
        # `ssh -tt` from a pipe asks for a 0x0 pty; line editing needs a real width.
        self.height, self.width = windowSize[0] or 24, windowSize[1] or 80

    def windowChanged(self, newWindowSize: tuple[int, ...]) -> None:
        # The stock session raises NotImplementedError on every terminal resize.
        rows, cols = newWindowSize[:2]
        if self._terminal is not None and self._terminal.terminalProtocol is not None:
            self._terminal.terminalProtocol.terminalSize(cols or 80, rows or 24)

    def eofReceived(self) -> None:
        # The client's stdin ended (e.g. piped commands): leave like Ctrl-D would.
        if self._terminal is not None:
            self._terminal.loseConnection()


def read_authorized_keys(path: str) -> list[keys.Key]:
    """Public keys of an OpenSSH authorized_keys file; ConsoleError if there are none.

    Lines with options (``from="..." ssh-ed25519 ...``) are skipped rather than accepted
    without the restriction they ask for.
    """
    what = ("put a line from your ~/.ssh/id_ed25519.pub in it (ssh-keygen -t ed25519 makes one), "
            "point control.console_keys at another file, or set control.console: none")
    try:
        with open(path, "rb") as f:
            lines = f.read().splitlines()
    except FileNotFoundError:
        raise ConsoleError(f"control.console_keys: {path} does not exist; {what}") from None
    except OSError as e:
        raise ConsoleError(f"control.console_keys: cannot read {path} ({e.strerror}); {what}") from None
    found, skipped = [], 0
    for line in lines:
        line = line.strip()
        if not line or line.startswith(b"#"):
            continue
        try:
            key = keys.Key.fromString(line)
        except Exception:  # BadKeyError, but also binascii/struct/ValueError on junk
            skipped += 1
            continue
        if key.isPublic():
            found.append(key)
        else:
            skipped += 1
    if not found:
        detail = f" ({skipped} unusable line{'s' if skipped != 1 else ''} skipped)" if skipped else ""
        raise ConsoleError(f"control.console_keys: no usable public key in {path}{detail}; {what}")
    return found


def load_host_key(state_dir: str) -> keys.Key:
    """The console's SSH host key, generated on first use so clients can pin it."""
    path = os.path.join(state_dir, HOST_KEY_NAME)
    if not os.path.exists(path):
        _generate_host_key(state_dir, path)
    try:
        if os.stat(path).st_mode & 0o077:
            os.chmod(path, 0o600)  # a private key readable by others is a leaked key
        key = keys.Key.fromFile(path)
    except Exception as e:
        raise ConsoleError(f"console host key {path} is unusable ({e}); "
                           "delete it and a new one is generated") from None
    if key.isPublic():
        raise ConsoleError(f"console host key {path} holds no private key; "
                           "delete it and a new one is generated")
    return key


def _generate_host_key(state_dir: str, path: str) -> None:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ed25519

    private = ed25519.Ed25519PrivateKey.generate()
    data = private.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                 serialization.NoEncryption())
    try:
        os.makedirs(state_dir, mode=0o700, exist_ok=True)
        tmp = f"{path}.{os.getpid()}.tmp"
        # Created 0600 from the start, renamed into place so nobody sees half a key.
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
        pub = keys.Key(private.public_key()).toString("openssh") + b" connscale-console\n"
        with open(path + ".pub", "wb") as f:
            f.write(pub)
    except OSError as e:
        raise ConsoleError(f"cannot write the console host key {path} ({e.strerror}); "
                           "make the run state directory writable") from None


def _ssh_factory(control: ControlSettings, namespace: dict[str, object],
                 state_dir: str) -> tuple[protocol.Factory, str]:
    assert control.console_keys is not None, "the console is opt-in: no keys, no console"
    keys_path = os.path.expanduser(control.console_keys)
    authorized = read_authorized_keys(keys_path)
    host_key = load_host_key(state_dir)

    realm = manhole_ssh.TerminalRealm()
    realm.sessionFactory = _ConsoleSession
    def terminal() -> insults.ServerProtocol:
        return insults.ServerProtocol(_ConsoleManhole, namespace)

    # Twisted types the attribute as its default class; it only ever calls it with no arguments.
    realm.chainedProtocolFactory = terminal  # type: ignore[assignment]
    checker = SSHPublicKeyChecker(InMemorySSHKeyDB({control.console_user.encode(): authorized}))
    # TerminalRealm is a realm (requestAvatar) that Twisted does not declare @implementer(IRealm).
    factory = manhole_ssh.ConchFactory(Portal(realm, [checker]))  # type: ignore[arg-type]
    # Instance dicts: ConchFactory's class-level dicts would be shared by every factory.
    factory.publicKeys = {host_key.sshType(): host_key.public()}
    # Twisted's ConchFactory says dict[bytes, bytes]; SSHFactory reads keys.Key values, as given here.
    factory.privateKeys = {host_key.sshType(): host_key}  # type: ignore[dict-item]
    what = (f"user {control.console_user}, {len(authorized)} key(s) from {keys_path}, "
            f"host key SHA256:{host_key.fingerprint(keys.FingerprintFormats.SHA256_BASE64).rstrip('=')}")
    return factory, what


# ---------------------------------------------------------------- service

class ConsoleService(EndpointService):
    """The console's port (see `net.listen.EndpointService`); errors are ConsoleError."""

    error_class = ConsoleError

    def __init__(self, reactor: Any, description: str, factory: protocol.Factory,
                 kind: str, what: str = "") -> None:
        super().__init__(reactor, description, factory, "control.console_listen", what,
                         label=f"console ({kind})")
        self.kind = kind


TELNET_REMOVED = ("control.console: the telnet console was removed (anything on this host, even a web "
                  "page's HTTP POST, could run Python in it); use console: ssh with control.console_keys")


def make_console(reactor: Any, control: ControlSettings, namespace: dict[str, object],
                 state_dir: str) -> service.IService | None:
    """The hub's console per ``control.console``; None when it is off.

    The console is opt-in: ``console: ssh`` (the default) listens only once
    ``control.console_keys`` names its own authorized_keys file. Raises ConsoleError
    (one line) for ``console: telnet``, a missing or keyless keys file, or an
    unusable host key.
    """
    if control.console == "none":
        return None
    if control.console == "telnet":
        raise ConsoleError(TELNET_REMOVED)
    if control.console == "ssh":
        if control.console_keys is None:
            log.info("console off: set control.console_keys to an authorized_keys file of its own to turn it on")
            return None
        if not binds_loopback(control.console_listen):
            log.warn("console: control.console_listen {listen} is reachable beyond loopback; anyone with a key "
                     "in {keys} gets a Python prompt inside the hub", listen=control.console_listen,
                     keys=control.console_keys)
        factory, what = _ssh_factory(control, wrap_namespace(namespace), state_dir)
        return ConsoleService(reactor, control.console_listen, factory, "ssh", what)
    raise ConsoleError(f"control.console: expected ssh or none, got {control.console!r}")
