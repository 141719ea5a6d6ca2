"""What the grpc and grpc.aio hooks share: wrapping a server, its ports, a handler's kind, cancellation.

No grpc import here (the hooks pass grpc's module where it is needed); the spans
themselves are :mod:`autotrace.rpc_span`'s.

- :func:`wrap_server`: ``grpc.server`` and ``grpc.aio.server`` with our interceptor
  (:func:`server_interceptor_type`) put FIRST in ``interceptors`` (the app's kept after
  it, in their order) and the server's ports noted (:class:`ServerPorts`,
  :func:`note_ports`), for ``server.address`` and ``server.port`` of its SERVER spans;
- :func:`with_interceptors`: a call's arguments with ``interceptors`` (positional or by
  name) combined with ours;
- :func:`handler_behavior`: the behavior of an ``RpcMethodHandler`` and the grpc
  function that makes a handler of the same kind;
- :func:`cancellation_code`: the status of a call that ended while its handler ran:
  DEADLINE_EXCEEDED when its deadline has passed, CANCELLED otherwise.
"""

from __future__ import annotations

import functools
import inspect

from . import rpc_span

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable

# A call cancelled this close to its deadline (seconds left, as the server sees it) was
# cancelled by the deadline: the client's own deadline fires a moment before the
# server's, and its cancellation reaches the server with the server's still running.
DEADLINE_SLACK = 0.05


def cancellation_code(context) -> int:
    """DEADLINE_EXCEEDED if the call's deadline has passed (``context.time_remaining()``), CANCELLED otherwise."""
    try:
        remaining = context.time_remaining() if context is not None else None
    except Exception:  # noqa: BLE001
        return rpc_span.CANCELLED
    return rpc_span.DEADLINE_EXCEEDED if remaining is not None and remaining <= DEADLINE_SLACK else rpc_span.CANCELLED


def wrap_server(original: Callable, interceptor: Callable[[ServerPorts], object]) -> Callable:
    """``grpc.server`` (or ``grpc.aio.server``) putting ``interceptor(ports)`` first; the ports noted."""

    def server(*args, **kwargs):
        ports = ServerPorts()
        try:
            ours = interceptor(ports)
            # server(thread_pool or migration_thread_pool, handlers=None, interceptors=None, ...)
            args, kwargs = with_interceptors(args, kwargs, 2, lambda app: [ours, *(app or ())])
        except Exception:  # noqa: BLE001 - arguments grpc itself will refuse
            pass
        made = original(*args, **kwargs)
        note_ports(made, ports)
        return made

    return server


def server_interceptor_type(base: type, intercept: Callable) -> type:
    """``ServerInterceptor``: a subclass of ``base`` (grpc's or grpc.aio's, which check with isinstance).

    One is made per server: it knows the server's ports. Its ``intercept_service`` is
    ``intercept(continuation, handler_call_details, ports)``, awaited when ``intercept``
    is a coroutine function (a coroutine method then, as grpc.aio's).
    """
    if inspect.iscoroutinefunction(intercept):

        async def intercept_service(self, continuation, handler_call_details):
            return await intercept(continuation, handler_call_details, self.ports)

    else:

        def intercept_service(self, continuation, handler_call_details):
            return intercept(continuation, handler_call_details, self.ports)

    def __init__(self, ports: ServerPorts) -> None:
        self.ports = ports

    namespace = {"__init__": __init__, "intercept_service": intercept_service, "__doc__": "One per server: it knows the server's ports."}
    made = type(base)("ServerInterceptor", (base,), namespace)
    made.__module__ = intercept.__module__
    return made


def with_interceptors(args: tuple, kwargs: dict, index: int, combine: Callable) -> tuple[tuple, dict]:
    """The arguments with ``interceptors`` (positional at ``index``, or by name) replaced by ``combine(the app's)``."""
    if len(args) > index:
        args = args[:index] + (combine(args[index]),) + args[index + 1 :]
    else:
        kwargs = dict(kwargs)
        kwargs["interceptors"] = combine(kwargs.get("interceptors"))
    return args, kwargs


def handler_behavior(handler, grpc) -> tuple[Callable | None, Callable]:
    """The handler's behavior for its kind (``unary_stream`` ...) and ``grpc.<kind>_rpc_method_handler``."""
    kind = ("stream_" if handler.request_streaming else "unary_") + ("stream" if handler.response_streaming else "unary")
    return getattr(handler, kind), getattr(grpc, kind + "_rpc_method_handler")


# The addresses a server binds to every interface with: not an address a client uses.
_WILDCARDS = frozenset({"", "0.0.0.0", "::", "[::]"})


class ServerPorts:
    """The ports a server was given; ``attributes``: what its SERVER spans record (None when not exactly one)."""

    __slots__ = ("_count", "attributes")

    def __init__(self) -> None:
        self._count = 0
        self.attributes: dict[str, object] | None = None

    def added(self, address: object, bound: object) -> None:
        """``add_insecure_port(address)`` or ``add_secure_port(address, ...)`` returned ``bound``."""
        try:
            if bound == 0:  # grpc could not bind it
                return
            host, port = rpc_span.split_target(address) if isinstance(address, str) else (None, None)
            attributes: dict[str, object] = {}
            if host and host not in _WILDCARDS:
                attributes["server.address"] = host
            if not (isinstance(address, str) and address.startswith("unix")):
                if isinstance(bound, int) and not isinstance(bound, bool) and bound > 0:
                    port = bound  # the port grpc chose for ":0"
                if port:
                    attributes["server.port"] = port
            self._count += 1
            self.attributes = (attributes or None) if self._count == 1 else None
        except Exception as exc:  # noqa: BLE001
            rpc_span.report(exc)


def note_ports(server: object, ports: ServerPorts) -> None:
    """Note in ``ports`` what the app's ``server.add_insecure_port``/``add_secure_port`` calls bind.

    The methods are wrapped on the server object itself; they return and raise what grpc's do.
    """
    for name in ("add_insecure_port", "add_secure_port"):
        try:
            setattr(server, name, _noting(getattr(server, name), ports))
        except Exception:  # noqa: BLE001 - a server object of another kind: its spans have no server.*
            pass


def _noting(add_port, ports: ServerPorts):
    @functools.wraps(add_port)
    def noting(*args, **kwargs):
        bound = add_port(*args, **kwargs)
        ports.added(args[0] if args else kwargs.get("address"), bound)
        return bound

    return noting
