"""A live MPEG-TS stream over HTTP on 127.0.0.1, for the reconnect tests.

`python _ts_server.py FILE PORT BYTES_PER_SECOND`: every GET gets the file's bytes at
that rate (as a camera's stream arrives: a little at a time), looped, until the client or
this process goes. Prints "ready" once it listens.
"""

from __future__ import annotations

import http.server
import sys
import time


def main() -> None:
    path, port, rate = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
    data = open(path, "rb").read()
    chunk = 188 * 7  # whole TS packets

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 - http.server's name
            self.send_response(200)
            self.send_header("Content-Type", "video/mp2t")
            self.end_headers()
            t0, sent = time.monotonic(), 0
            try:
                while True:
                    wait = t0 + sent / rate - time.monotonic()
                    if wait > 0:
                        time.sleep(wait)
                    pos = sent % len(data)
                    self.wfile.write(data[pos:pos + chunk])
                    sent += min(chunk, len(data) - pos)
            except (BrokenPipeError, ConnectionResetError):
                pass

        def log_message(self, *args):
            pass

    class Server(http.server.ThreadingHTTPServer):
        allow_reuse_address = True
        daemon_threads = True

    server = Server(("127.0.0.1", port), Handler)
    print("ready", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    main()
