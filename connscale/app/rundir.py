"""A run's directory: created once, written atomically, never holding a secret
(the configuration's files are the owner's alone, 0600).

Everything a run records goes here (`config.json`, `summary.json`, the logs of
its hub and agent, the hub's `timeline.jsonl`). A full or read-only disk must
cost a clear line, not a traceback, and must never lose the summary: callers
get a `RunDirError` with one line and decide where else to put what failed.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any, Callable

import yaml

from connscale.config.settings import Config


class RunDirError(Exception):
    """The run directory could not be created or written; the message is one line."""


def _why(e: OSError) -> str:
    return e.strerror or str(e)


class RunDirectory:
    def __init__(self, path: Path) -> None:
        self.path = path

    @classmethod
    def create(cls, parent: str | os.PathLike[str],
               stamp: Callable[[], str] = lambda: time.strftime("%Y%m%d-%H%M%S")) -> "RunDirectory":
        """A new directory `<parent>/<stamp>[-N]`; never reuses an existing one."""
        base = Path(parent)
        name = stamp()
        for suffix in range(1, 1000):
            path = base / (name if suffix == 1 else f"{name}-{suffix}")
            try:
                path.mkdir(parents=True)
            except FileExistsError:
                continue
            except OSError as e:
                raise RunDirError(f"cannot create a run directory under {base}: {_why(e)}") from None
            return cls(path.resolve())
        raise RunDirError(f"cannot create a run directory under {base}: 999 runs named {name} already")

    def file(self, name: str) -> Path:
        return self.path / name

    def write_text(self, name: str, text: str, mode: int = 0o644) -> Path:
        """Write `name` whole or not at all (a torn summary is worse than none), through a
        temporary file of our own (created exclusively: never a link someone left there)."""
        target = self.file(name)
        tmp: str | None = None
        try:
            fd, tmp = tempfile.mkstemp(prefix=f".{name}.", suffix=".tmp", dir=self.path)
            os.fchmod(fd, mode)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
            os.replace(tmp, target)
        except OSError as e:
            if tmp is not None:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
            raise RunDirError(f"cannot write {target}: {_why(e)}") from None
        return target

    def write_json(self, name: str, data: Any) -> Path:
        return self.write_text(name, json.dumps(data, indent=2, sort_keys=True) + "\n")

    def write_config(self, cfg: Config) -> Path:
        """`config.json` for the record (secrets and `clients.*.env` values redacted) and
        `config.yaml` for the run's hub and agent: the effective configuration with no
        secret in it at all (the children get the secret, and the `env` values, through
        their environment: `children.child_env`). Both are the owner's alone (0600).
        Returns the latter."""
        self.write_text("config.json", json.dumps(cfg.as_dict(), indent=2, sort_keys=True) + "\n", mode=0o600)
        config = cfg.as_dict()
        config["control"]["secret"] = None
        config["control"]["secret_file"] = None
        # The target's password rides the children's environment too (`children.child_env`).
        config["client"]["password"] = None
        return self.write_text("config.yaml", yaml.safe_dump(config, sort_keys=False), mode=0o600)
