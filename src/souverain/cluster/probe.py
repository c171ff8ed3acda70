"""Ask a Ray head's GCS which nodes it has, as a process of its own:

    python -m souverain.cluster.probe HOST:PORT

Ray reads its authentication mode and token from the environment once per process, so
asking with and without the cluster's token takes two processes (`ray_node.probe`).
Prints the alive nodes as JSON lines (address, labels) and exits 0; exits 3 when the head
refuses the credentials, 2 when it cannot be reached.
"""

from __future__ import annotations

import json
import sys

REFUSED = 3
UNREACHABLE = 2


def main(address: str) -> int:
    from ray._raylet import GcsClient  # type: ignore[attr-defined]  # late: `-m` imports us first

    try:
        client = GcsClient(address=address)
        nodes = client.get_all_node_info(timeout=5)
    except Exception as error:  # Ray raises several kinds; the words say which
        text = f"{type(error).__name__}: {error}"
        refused = "authenticat" in text.lower() or "UNAUTHENTICATED" in text
        print(text, file=sys.stderr)
        return REFUSED if refused else UNREACHABLE
    for info in nodes.values():
        if info.state == 0:  # ALIVE
            labels = dict(info.labels)
            print(json.dumps({"address": info.node_manager_address, "labels": labels}))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
