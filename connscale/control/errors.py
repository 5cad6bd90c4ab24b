"""The error the controller sends to whoever gave it an order it cannot carry out."""

from __future__ import annotations

from twisted.spread import pb


class ControlError(pb.Error):
    """An error meant for the operator (or the agent); crosses PB as its one-line message."""
