"""The factory side of the fleet: a typed client for the coordinator's HTTP API
(`FleetClient`), the `fleet` CLI's operator commands (`fleetclient.commands`), and the reference
factory runner (`fleetclient.runner`).
"""
from fleetclient import errors
from fleetclient.client import FleetClient

__all__ = ["FleetClient", "errors"]
