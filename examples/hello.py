"""A tiny service with no tracing code: under ``autotrace run`` its requests are traced.

It serves two paths on a free loopback port: ``/hello`` calls ``/world`` with
urllib. Then it calls ``/hello`` once and stops. Run it under the agent with the
console view and the trace is printed on stderr: the outer CLIENT span, the SERVER
span of ``/hello``, the CLIENT call it makes, the SERVER span of ``/world``.

    autotrace run --exporter console python examples/hello.py
"""

import threading
import urllib.request
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer


class Handler(BaseHTTPRequestHandler):
    def do_GET(self):  # noqa: N802 - http.server's name
        if self.path == "/hello":
            with urllib.request.urlopen(f"http://127.0.0.1:{self.server.server_port}/world", timeout=5) as reply:
                body = b"hello " + reply.read()
        else:
            body = b"world"
        self.send_response(200)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
threading.Thread(target=server.serve_forever, daemon=True).start()
try:
    with urllib.request.urlopen(f"http://127.0.0.1:{server.server_port}/hello", timeout=5) as response:
        print(response.read().decode())
finally:
    server.shutdown()
    server.server_close()
