"""Run under ``unshare --user --map-user=1000`` by test_unprivileged.py: the sandbox sees a non-root uid and
takes its unprivileged path (a user namespace of its own, then network, mount and PID namespaces).

``python unprivileged_worker.py probes PORT PATH...`` prints one JSON object of what a few probe checks saw;
``python unprivileged_worker.py hang`` starts a check that sleeps, prints ``started`` and waits to be killed.
"""

from __future__ import annotations

import json
import sys

from test_isolation import FOUR_CHILDREN, MiB  # (this script's folder is first on sys.path)

from trl_mars.sandbox import Sandbox

ADD_ONE = "def f(x):\n    return x + 1\n"
PROCESSES = "import os\ndef f():\n    return sorted(p for p in os.listdir('/proc') if p.isdigit())\n"
CONNECT = "import socket\ndef f(port):\n    socket.create_connection(('127.0.0.1', port), timeout=1)\n    return 1\n"
EXISTING = "import os\ndef f(paths):\n    return [p for p in paths if os.path.exists(p)]\n"


def probes(port: int, paths: list[str]) -> dict:
    with Sandbox(concurrency=1, timeout_s=10.0, max_total_s=12.0, memory_bytes=256 * MiB) as sb:
        isolation = sb.start()
        add = sb.run(ADD_ONE, ["assert f(1) == 2", "assert f(1) == 3"])
        seen = sb.run(PROCESSES, ["assert f() == []"]).verdicts[0]
        connect = sb.run(CONNECT, [f"assert f({port}) == 1"]).verdicts[0]
        files = sb.run(EXISTING, [f"assert f({paths!r}) == []"]).verdicts[0]
        memory = sb.run(FOUR_CHILDREN, ["assert f() == 4"]).verdicts[0]
        after = sb.run(ADD_ONE, ["assert f(2) == 3"])
    return {
        "isolation": isolation,
        "add": [(v.status, v.trusted) for v in add.verdicts],
        "processes": seen.actual,
        "connect": [connect.status, connect.error_type],
        "files": [files.status, files.actual],
        "memory": memory.status,
        "after": after.passed,
    }


def hang() -> None:
    with Sandbox(concurrency=1, timeout_s=60.0, max_total_s=60.0) as sb:
        future = sb.submit("import time\ndef f():\n    time.sleep(60)\n", ["f()"])
        print("started", flush=True)
        future.result()


if __name__ == "__main__":
    if sys.argv[1] == "probes":
        print(json.dumps(probes(int(sys.argv[2]), sys.argv[3:])))
    else:
        hang()
