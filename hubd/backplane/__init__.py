"""How a hub shares events, history and connection facts with other nodes.

The web layer talks to a `Backplane`, never to the transport behind it:

- `MemoryBackplane` (the default): one node; everything happens in this process.
- `hubd.backplane.redis.RedisBackplane`: several nodes sharing one Redis.

Every backplane gives the same guarantees (tested by one contract suite): an accepted
publish reaches every subscriber of every node once, in publish order per publisher;
`replay` returns what a resuming client missed; `claim_ip` enforces one connection per
client IP across the nodes; `clients` and `unsubscribe` reach connections on any node.

`base` holds the `Backplane` protocol and the steps built on it (`publish_through`,
`join`); `memory` and `redis` implement it. A backplane changes the hub only through
its methods (`Hub.publish`, `Hub.mark_seen`, `Hub.adopt_numbering`, ...), never by
assigning its fields. The Redis backplane is imported only where it is used
(`hubd.service`), so nothing else loads the Redis client.
"""

from hubd.backplane.base import Backplane, join, publish_through, unavailable
from hubd.backplane.memory import MemoryBackplane

__all__ = ["Backplane", "MemoryBackplane", "join", "publish_through", "unavailable"]
