"""The prices service, a gRPC server (``shop.Prices/Quote``; JSON messages, so no generated
code): a quote for a list of items. No tracing code.

Run by ``run.py``: ``python prices.py PORT``.
"""

import json
import signal
import sys
import threading
from concurrent.futures import ThreadPoolExecutor

import grpc

PRICES = {"book": 12.5, "lamp": 30.0, "pen": 1.5, "mug": 8.0}


def quote(request: dict, context: grpc.ServicerContext) -> dict:
    unknown = [item for item in request["items"] if item not in PRICES]
    if unknown:
        context.abort(grpc.StatusCode.NOT_FOUND, f"no price for {', '.join(unknown)}")
    return {"total": sum(PRICES[item] for item in request["items"])}


handler = grpc.method_handlers_generic_handler("shop.Prices", {
    "Quote": grpc.unary_unary_rpc_method_handler(
        quote, request_deserializer=json.loads, response_serializer=lambda answer: json.dumps(answer).encode()
    ),
})
server = grpc.server(ThreadPoolExecutor(max_workers=8))
server.add_generic_rpc_handlers((handler,))
port = server.add_insecure_port(f"127.0.0.1:{sys.argv[1]}")
server.start()
print(f"prices listening on 127.0.0.1:{port}", flush=True)
stopping = threading.Event()
signal.signal(signal.SIGTERM, lambda signum, frame: stopping.set())
stopping.wait()
server.stop(grace=5).wait(10)  # the calls in progress finish; then the agent flushes at exit
