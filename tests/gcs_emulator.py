"""A real GCS emulator on 127.0.0.1 for gs:// tests, plus a tiny GCE metadata endpoint.

Without credentials, Beam retries the metadata server for ~23 s per process on first GCS use;
the local metadata endpoint hands out a dummy token at once (the emulator does not check it).
Both addresses go into environment variables, so worker subprocesses see them too.
"""

from __future__ import annotations

import contextlib
import http.server
import json
import os
import socket
import threading


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Metadata(http.server.BaseHTTPRequestHandler):
    ANSWERS = {
        "/token": json.dumps({"access_token": "emulator", "expires_in": 3600, "token_type": "Bearer"}),
        "/project-id": "dptext-test",
        "universe-domain": "googleapis.com",
        "/email": "test@dptext-test.iam.gserviceaccount.com",
    }

    def do_GET(self):
        path = self.path.split("?")[0]
        body = next((v for k, v in self.ANSWERS.items() if path.endswith(k)), None)
        if body is None:
            body = (
                json.dumps(
                    {
                        "email": self.ANSWERS["/email"],
                        "aliases": ["default"],
                        "scopes": ["https://www.googleapis.com/auth/cloud-platform"],
                    }
                )
                if "service-accounts/default" in path
                else "ok"
            )
        data = body.encode()
        self.send_response(200)
        self.send_header("Metadata-Flavor", "Google")
        self.send_header("Content-Type", "application/json" if body.startswith("{") else "text/plain")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def log_message(self, *args):
        pass


@contextlib.contextmanager
def gcs_emulator(bucket: str):
    """Run the emulator with one bucket; yields the bucket's gs:// root. Whatever fails, everything
    started is stopped: a storage server left running kept pytest from exiting (seen once in CI's
    command, after a port taken between choosing it and binding it)."""
    from gcp_storage_emulator.server import create_server

    metadata = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Metadata)  # the OS picks: no race
    metadata_port = metadata.server_address[1]
    threading.Thread(target=metadata.serve_forever, daemon=True).start()
    server = None
    saved: dict = {}
    try:
        for _ in range(5):
            port = _free_port()
            server = create_server("127.0.0.1", port, in_memory=True, default_bucket=bucket)
            # Its API thread binds the port it was given: if another process took that port since
            # _free_port, the thread dies and Server.start() would wait forever. So start the thread
            # as a daemon (never keeps the interpreter alive) and wait for it a bounded time.
            api = server._api  # noqa: SLF001 -- the emulator has no public way to do either
            api.daemon = True
            api.start()
            while api.is_alive() and not api.is_running.wait(0.1):
                pass  # a thread that could not bind ends at once
            if api.is_running.is_set():
                break
            server = None
        else:
            raise OSError("the storage emulator could not bind a free port in 5 attempts")
        env = {
            "STORAGE_EMULATOR_HOST": f"http://127.0.0.1:{port}",
            "GCE_METADATA_HOST": f"127.0.0.1:{metadata_port}",
            "GCE_METADATA_IP": f"127.0.0.1:{metadata_port}",
        }
        saved = {k: os.environ.get(k) for k in env}
        os.environ.update(env)
        yield f"gs://{bucket}"
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        metadata.shutdown()
        metadata.server_close()
        if server is not None:
            server.stop()
