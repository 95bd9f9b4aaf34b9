"""Create .venv even where `python3 -m venv` cannot install pip (Debian without the
python3-venv package): make the venv without pip, fetch pip's wheel from PyPI, and let
pip install itself from that wheel. Standard library only."""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import urllib.parse
import urllib.request
import venv
from pathlib import Path

INDEX = "https://pypi.org/pypi/pip/json"


def main(target: str) -> int:
    path = Path(target)
    try:
        venv.create(path, with_pip=True)
        return 0
    except subprocess.CalledProcessError:
        print("bootstrap: venv has no ensurepip here; fetching pip from PyPI", file=sys.stderr)
    venv.create(path, with_pip=False, clear=True)
    with urllib.request.urlopen(INDEX, timeout=60) as response:
        release = json.load(response)
    wheel = next(f for f in release["urls"] if f["filename"].endswith(".whl"))
    with tempfile.TemporaryDirectory() as tmp:
        local = Path(tmp) / wheel["filename"]
        url = urllib.parse.urljoin(INDEX, wheel["url"])  # mirrors may answer relative URLs
        with urllib.request.urlopen(url, timeout=120) as response:
            local.write_bytes(response.read())
        python = path / "bin" / "python"
        # A pip wheel can run itself: `python pip.whl/pip install pip.whl`.
        subprocess.run([str(python), f"{local}/pip", "install", "--quiet", str(local)], check=True)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1] if len(sys.argv) > 1 else ".venv"))
