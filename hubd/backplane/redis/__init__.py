"""Several hubd nodes acting as one hub through one Redis server (coredis, on trio).

What Redis holds (all keys under `backplane.prefix`, "hubd" by default):

- `<p>:epoch`: the cluster's id epoch (8 hex), set once; `<p>:seq`: the event counter.
- `<p>:stream:<channel>`: each channel's history, a Stream capped at `hub.history_size`
  entries; entry id `<seq>-0`, fields `f` (the event's JSON) and `t` (publish time, ms).
  `<p>:evicted`: per channel, the newest seq trimmed from its stream.
- `<p>:events`: the Pub/Sub channel every node listens to; one message per event:
  `<channel>\\n<target client_id or empty>\\n<seq>\\n<events in its request>\\n<event JSON>`.
- `<p>:control`: Pub/Sub for commands to the node holding a connection (unsubscribe).
- `<p>:ip:<ip>` and `<p>:client:<client_id>`: which node holds which client IP and
  connection, as leases the node renews every `lease_seconds / 3`.

A publish is one Lua script: it numbers the events, stores them in their channel's
stream and announces them, atomically, so every node sees events in sequence order and a
node that lost its subscription can catch up exactly from the streams. Many events of a
request share that one round trip.

Every event is one message on `<p>:events` to every node, so a node knows how far behind
it is: the cluster's `<p>:seq` minus the last seq it delivered. coredis reads Pub/Sub
messages off the socket into an unbounded buffer; a node whose fan-out is slower than the
cluster's publish rate would grow it without limit. So while events flow a node compares
the two every `LAG_CHECK` seconds, and beyond `backplane.max_lag` it drops its
subscription (its own Redis connection, and with it everything buffered), subscribes
again and catches up from the streams. What the streams no longer hold, its subscribers
are told about (`Hub.missed`).

The modules, by job: `scripts` (the Lua scripts), `wire` (message and argument formats),
`options` (client options from `backplane.url`), `connection` (reconnect loop, error
classification, epoch, lag cutoff), `outage` (what is logged while Redis is down),
`leases` (IP and connection claims), `catchup` (delivery into the hub, catch-up, replay),
and `node` (`RedisBackplane`, composing them).
"""

from hubd.backplane.redis.catchup import GAP
from hubd.backplane.redis.node import RedisBackplane

__all__ = ["GAP", "RedisBackplane"]
