"""A forked API over Redis for test_prefork.py: ``python -m tests.serving.prefork_server REDIS_URL
NAMESPACE BUNDLE STATE_DIR PORT_FILE``. Loads once, forks two API processes, writes the port."""

from __future__ import annotations

import sys
from pathlib import Path

from recstack.serving import prefork


def main() -> None:
    redis_url, namespace, bundle, state_dir, port_file = sys.argv[1:]
    metrics = prefork.multiprocess_metrics()  # before prometheus_client is imported
    try:
        serve(redis_url, namespace, bundle, state_dir, port_file)
    finally:
        prefork.remove_metrics_folder(metrics)


def serve(redis_url: str, namespace: str, bundle: str, state_dir: str, port_file: str) -> None:
    prefork.prepare_parent()

    from recstack.events.redis_stream import RedisStreamLog
    from recstack.features.stores import RedisStore
    from recstack.serving.api import Runtime, create_app
    from tests.serving.conftest import feed_settings

    runtime = Runtime(
        feed_settings(Path(state_dir)),
        RedisStreamLog(redis_url, stream=f"{namespace}:events"),
        store=RedisStore(redis_url, prefix=f"{namespace}:state:"),
        bundle_source=lambda: ("1", Path(bundle)),
        in_process_worker=False,
    )
    sock = prefork.listen("127.0.0.1", 0)
    runtime.reload()
    Path(port_file).write_text(str(sock.getsockname()[1]))
    sys.exit(prefork.serve_processes(runtime, create_app, sock, 2))


if __name__ == "__main__":
    main()
