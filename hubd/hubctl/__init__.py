"""hubctl, the operator's command line for hubd: subscribe, publish, unsubscribe, whoami,
clients, stats. Built on `hubd.client`; see docs/client.md."""

from hubd.hubctl.main import main

__all__ = ["main"]
