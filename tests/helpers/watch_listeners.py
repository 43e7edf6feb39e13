"""Run a command and record every address its process tree listens on while it runs.

``python tests/helpers/watch_listeners.py OUT.json -- COMMAND...``: COMMAND's exit code is this
script's; OUT.json gets ``{"listening": ["ip:port (process)", ...]}``. The tests run it inside a
private network namespace (``unshare -n``) whose only interfaces are loopback and a veth holding a
TEST-NET address with a default route, so whatever the command binds stays in that namespace while
Ray sees what looks like a machine on a network.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time

import psutil


def listening(root: psutil.Process) -> set[str]:
    try:
        tree = {root.pid: root.name()} | {p.pid: p.name() for p in root.children(recursive=True)}
    except psutil.Error:
        return set()
    found = set()
    for connection in psutil.net_connections(kind="inet"):
        if connection.status == psutil.CONN_LISTEN and connection.pid in tree:
            found.add(f"{connection.laddr.ip}:{connection.laddr.port} ({tree[connection.pid]})")
    return found


def main() -> int:
    out, separator, *command = sys.argv[1:]
    assert separator == "--" and command, __doc__
    process = subprocess.Popen(command)
    seen: set[str] = set()
    while process.poll() is None:
        seen |= listening(psutil.Process(process.pid)) if process.poll() is None else set()
        time.sleep(0.25)
    with open(out, "w") as handle:
        json.dump({"listening": sorted(seen)}, handle, indent=1)
    return process.returncode


if __name__ == "__main__":
    sys.exit(main())
