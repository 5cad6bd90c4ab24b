"""The control layer's errors: what the controller sends to whoever gave it an order it cannot
carry out, and what stops a hub, an agent or an observer from starting."""

from __future__ import annotations

from twisted.spread import pb


class ControlError(pb.Error):
    """An error meant for the operator (or the agent); crosses PB as its one-line message."""


class StartError(Exception):
    """A hub, agent or observer cannot start. One line, without the program's name: the tap that
    started it says whose and exits (app/startup.startup_errors); the control layer never exits."""
