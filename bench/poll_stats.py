"""Poll a running hubd's admin stats once a second and keep the last answer.

Used beside the side-by-side harness (which starts and stops the server itself) to read
hubd's own delivery-latency histogram for the same run:

    python -m bench.poll_stats --port 18080 --token bench --out /tmp/hubd-stats.json &
    ../shared/bench/run.sh "exec bench/serve.sh" light

It waits for the server to come up, and exits once it has gone away again."""

from __future__ import annotations

import argparse
import json
import time
import urllib.error
import urllib.request


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=18080)
    parser.add_argument("--token", default="bench")
    parser.add_argument("--out", required=True)
    parser.add_argument("--wait", type=float, default=120.0, help="seconds to wait for a server")
    args = parser.parse_args()
    request = urllib.request.Request(
        f"http://127.0.0.1:{args.port}/v1/ws/stats",
        headers={"Authorization": f"Bearer {args.token}"},
    )
    seen = False
    give_up = time.monotonic() + args.wait
    while True:
        try:
            with urllib.request.urlopen(request, timeout=2) as response:
                stats = json.loads(response.read())
        except (OSError, urllib.error.URLError, ValueError):
            if seen or time.monotonic() > give_up:
                return
            time.sleep(0.2)
            continue
        seen = True
        with open(args.out, "w") as out:
            json.dump(stats, out)
        time.sleep(1.0)


if __name__ == "__main__":
    main()
