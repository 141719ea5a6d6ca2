"""grpc (sync API): each RPC a server handles is one SERVER span, each RPC a channel sends one CLIENT span.

Waits for ``grpc``. Patched are the functions of the ``grpc`` module the app calls to
make servers and channels (``from grpc import server`` after the import gets the
wrapper too); grpc.aio has a hook of its own (:mod:`autotrace.hooks.grpc_aio`).

- ``grpc.server(...)``: our ``ServerInterceptor`` is put FIRST in ``interceptors``, the
  app's kept after it, in their order. grpc gives server interceptors control in list
  order, the first one outermost: our wrapper of the handler's behavior runs outside
  everything the app's interceptors wrap around it, so the SERVER span covers them and
  its context is current while they and the handler run. (What an app interceptor does
  in ``intercept_service`` itself runs when grpc looks the handler up, before any
  behavior runs, and so before the span starts.)
- ``grpc.insecure_channel(...)`` and ``grpc.secure_channel(...)``: the channel grpc
  makes is returned as ``grpc.intercept_channel(channel, our_interceptor)``: ours is the
  innermost interceptor, the closest to the wire. An app that intercepts the channel
  itself (``grpc.intercept_channel(channel, *its_interceptors)``) puts its interceptors
  outside ours: they run first, under the app's context (the CLIENT span is not started
  yet); the metadata they add is kept, and ours (``traceparent`` ...) is added last; an
  app interceptor that calls on several times (retries) makes one CLIENT span per
  attempt. ``intercept_channel`` itself is not patched: a channel carries our
  interceptor once, however often the app intercepts it. The channel keeps grpc's
  channel interface (``close()``, ``with``, ``subscribe`` ...); it is grpc's
  intercepted channel, as with any interceptor.

SERVER span: it starts when grpc calls the handler's behavior (in its thread pool), with
the parent the call's metadata carries; the span's context is current while the
behavior runs. It ends when the behavior returns, with the code the handler set
(``context.code()``, OK if none); when it raises, with the code ``context.abort`` (or
``set_code``) gave, UNKNOWN for another exception (the code grpc sends). A response
stream (the behavior returns an iterator) is covered to its end: each ``next()`` grpc
calls on it runs with the span's context current, and the span ends at the last
message, an exception, or ``close()``. A callback grpc runs when the RPC terminates
(``context.add_callback``) ends a span still open then: the client cancelled the call or
its deadline passed while the handler ran or the stream was sent, and grpc stops
waiting for the handler. It is recorded DEADLINE_EXCEEDED when the call's deadline has
passed, CANCELLED otherwise; the handler, still running, goes on under the span's
context, as without the agent. (grpc shows a handler that reads a request stream the
client's cancellation as the end of that stream: a handler that then ends before grpc
has seen the cancellation is recorded with the code it ended with.) A call grpc
answers without a behavior has a SERVER span ended at once: UNIMPLEMENTED when no
handler knows the method, UNKNOWN (the exception recorded) when an app interceptor's
``intercept_service`` raised. A call whose behavior never starts (the client went away
before its request was read) has no span.

CLIENT span: it starts when our interceptor is called, in the thread that calls (the
app's context is its parent), and the call is sent with the span's context current. It
ends when the call is done, with the call's status code: before a blocking call
(``stub.Method(request)``, ``with_call``) returns or raises; when a ``future()``
completes; when a response stream's status arrives, or the app cancels it
(``call.cancel()``, the deadline passes, or the app drops the call unfinished and grpc
cancels it as it is collected: the agent keeps no reference to the call, see
:func:`_end_when_done`). Responses, statuses and the exceptions the
app sees (``RpcError``: the same ``code()`` and ``details()``) are grpc's own.
Instrumentation suppressed (the agent's own OTLP/gRPC exporter calls): the call goes on
unchanged, without a span.
"""

from __future__ import annotations

import threading
import weakref
from collections import namedtuple

from autotrace import grpc_common, rpc_span
from autotrace.grpc_common import ServerPorts
from autotrace.patching import wrap_function
from autotrace.rpc_span import CANCELLED, INTERNAL, OK, UNIMPLEMENTED

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType

# Made by patch() from the grpc module's classes (their base classes must be grpc's).
_grpc = None
_server_interceptor_type: type | None = None
_client_interceptor_type: type | None = None
_call_details_type: type | None = None


def patch(module: ModuleType) -> None:
    _define_classes(module)
    wrap_function(module, "server", lambda original: grpc_common.wrap_server(original, _server_interceptor))
    wrap_function(module, "insecure_channel", lambda original: _wrap_channel(original, module.intercept_channel))
    wrap_function(module, "secure_channel", lambda original: _wrap_channel(original, module.intercept_channel))


# -- servers and channels ------------------------------------------------------------


def _server_interceptor(ports: ServerPorts):
    return _server_interceptor_type(ports)


def _wrap_channel(original, intercept_channel):
    def channel(*args, **kwargs):
        made = original(*args, **kwargs)
        try:
            target = args[0] if args else kwargs.get("target")
            return intercept_channel(made, _client_interceptor_type(target))
        except Exception:  # noqa: BLE001 - the app gets grpc's channel as it is
            return made

    return channel


def _define_classes(grpc) -> None:
    global _grpc, _server_interceptor_type, _client_interceptor_type, _call_details_type
    if _server_interceptor_type is not None and _grpc is grpc:
        return

    class ClientInterceptor(
        grpc.UnaryUnaryClientInterceptor,
        grpc.UnaryStreamClientInterceptor,
        grpc.StreamUnaryClientInterceptor,
        grpc.StreamStreamClientInterceptor,
    ):
        __slots__ = ("target",)

        def __init__(self, target) -> None:
            self.target = target

        def intercept_unary_unary(self, continuation, client_call_details, request):
            return _intercept_call(self.target, continuation, client_call_details, request)

        def intercept_unary_stream(self, continuation, client_call_details, request):
            return _intercept_call(self.target, continuation, client_call_details, request)

        def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
            return _intercept_call(self.target, continuation, client_call_details, request_iterator)

        def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
            return _intercept_call(self.target, continuation, client_call_details, request_iterator)

    class CallDetails(
        namedtuple("CallDetails", ("method", "timeout", "metadata", "credentials", "wait_for_ready", "compression")),
        grpc.ClientCallDetails,
    ):
        pass

    for kind in (ClientInterceptor, CallDetails):
        kind.__module__ = __name__
        kind.__qualname__ = kind.__name__
    _grpc = grpc
    _server_interceptor_type = grpc_common.server_interceptor_type(grpc.ServerInterceptor, _intercept_service)
    _client_interceptor_type = ClientInterceptor
    _call_details_type = CallDetails


# -- client --------------------------------------------------------------------------


def _intercept_call(target, continuation, details, request):
    rpc = rpc_span.start_client(details.method, target)
    if rpc is None:
        return continuation(details, request)
    try:
        outgoing = _call_details_type(
            details.method,
            getattr(details, "timeout", None),
            rpc.outgoing_metadata(getattr(details, "metadata", None)),
            getattr(details, "credentials", None),
            getattr(details, "wait_for_ready", None),
            getattr(details, "compression", None),
        )
    except Exception:  # noqa: BLE001 - odd call details: the call goes on as it is
        rpc.end()
        return continuation(details, request)
    rpc.attach()
    try:
        call = continuation(outgoing, request)
    except BaseException as exc:
        rpc.detach()
        rpc.fail(exc)
        rpc.end()
        raise
    rpc.detach()
    try:
        _end_when_done(rpc, call)
    except Exception:  # noqa: BLE001 - not a grpc call object: nothing tells its end
        rpc.end()
    return call


def _end_when_done(rpc: rpc_span.RpcSpan, call) -> None:
    """End the CLIENT span when the call is done, without keeping the call object alive.

    grpc's ``add_done_callback`` keeps the call referenced until its status arrives. A
    response stream or future the app drops unfinished is cancelled by grpc when it is
    collected (``__del__``: "Cancelled upon garbage collection!"); a callback holding it
    would stop that, and the server would go on sending. So a call of grpc's own (a
    rendezvous: ``_state`` with ``condition`` and ``callbacks``) gets its callback on that
    state, the list ``add_done_callback`` uses, and the status is read from there. The span
    also ends when such a call is collected before its status is handled (a
    single-threaded response stream: nothing reads its events any more), as CANCELLED.
    Other call objects (a unary call's outcome, already done) use ``add_done_callback``.
    """
    state = getattr(call, "_state", None)
    condition = getattr(state, "condition", None)
    if condition is None or not isinstance(getattr(state, "callbacks", None), list):
        call.add_done_callback(lambda done: _client_done(rpc, done))
        return
    once = [state]  # popped by the first of the status callback and the finalizer

    def done() -> None:
        try:
            done_state = once.pop()
        except IndexError:
            return
        _status_done(rpc, done_state)

    with condition:
        if state.code is None and isinstance(state.callbacks, list):
            state.callbacks.append(done)
            weakref.finalize(call, done).atexit = False
            return
    done()


def _status_done(rpc: rpc_span.RpcSpan, state) -> None:
    """The status on a call's state; none yet: the call was collected unfinished (grpc cancels it)."""
    try:
        code = state.code
        rpc.set_code(CANCELLED if code is None else code, state.details)
    except Exception:  # noqa: BLE001 - the span ends without a code
        pass
    rpc.end()


def _client_done(rpc: rpc_span.RpcSpan, call) -> None:
    try:
        code = call.code()
        if rpc_span.status_code(code)[0] == OK:
            rpc.set_code(code)
        else:
            try:
                exception = call.exception()
            except Exception:  # noqa: BLE001 - grpc.FutureCancelledError: the app cancelled it
                exception = None
            if exception is not None and not isinstance(exception, _grpc.RpcError):
                rpc.fail(exception, code)  # raised before the call was sent (grpc reports INTERNAL)
            else:
                rpc.set_code(code, call.details())
    except Exception:  # noqa: BLE001 - the span ends without a code
        pass
    rpc.end()


# -- server --------------------------------------------------------------------------


def _intercept_service(continuation, handler_call_details, ports: ServerPorts):
    try:
        handler = continuation(handler_call_details)
    except BaseException as exc:  # an app interceptor raised: grpc answers UNKNOWN
        _unserved(handler_call_details, ports, exc=exc)
        raise
    if handler is None:  # grpc answers UNIMPLEMENTED ("Method not found!")
        _unserved(handler_call_details, ports, code=UNIMPLEMENTED)
        return None
    try:
        return _traced_handler(handler, _Serving(handler_call_details.method, ports))
    except Exception:  # noqa: BLE001 - a handler of a kind we do not know: served as it is
        return handler


def _unserved(handler_call_details, ports: ServerPorts, code: int | None = None, exc: BaseException | None = None) -> None:
    """A call grpc answers without running a behavior: a SERVER span of its own, ended at once (as grpc.aio's)."""
    try:
        rpc = rpc_span.start_server(handler_call_details.method, handler_call_details.invocation_metadata, attach=False)
    except Exception:  # noqa: BLE001 - call details that are not grpc's
        return
    if rpc is None:
        return
    rpc.set_server(ports)
    if exc is not None:
        rpc.fail(exc)  # UNKNOWN, the exception recorded
    else:
        rpc.set_code(code)
    rpc.end()


class _Serving:
    """One RPC's handler, made for it: the method, the server's ports, and the call once the behavior starts."""

    __slots__ = ("call", "method", "ports")

    def __init__(self, method: str, ports: ServerPorts) -> None:
        self.method = method
        self.ports = ports
        self.call: _ServerCall | None = None


def _traced_handler(handler, serving: _Serving):
    behavior, make = grpc_common.handler_behavior(handler, _grpc)
    streaming = handler.response_streaming
    if behavior is None:
        return handler
    serializer = handler.response_serializer
    if serializer is not None:
        serializer = _traced_serializer(serializer, serving, streaming)
    return make(_traced_behavior(behavior, serving, streaming, serializer is not None), handler.request_deserializer, serializer)


def _traced_behavior(behavior, serving: _Serving, streaming: bool, serialized: bool):
    """``serialized``: a unary response's span ends when our serializer has serialized it."""

    def traced(argument, context, *more):
        call = serving.call = _ServerCall.start(serving, context)
        if call is None:
            return behavior(argument, context, *more)
        if more:  # experimental_non_blocking: responses are sent with the callback grpc gives
            more = (call.sending(more[0]),) + more[1:]
        rpc = call.rpc
        rpc.attach()
        try:
            result = behavior(argument, context, *more)
        except BaseException as exc:
            rpc.detach()
            call.failed(exc)
            raise
        rpc.detach()
        if more:
            return result  # the span ends when the stream's end is sent, or the RPC terminates
        if streaming:
            return _ResponseStream(result, call)
        if not serialized:
            call.finish()
        return result

    # grpc reads these attributes of a behavior (thread pool, non-blocking streaming).
    for name in ("experimental_non_blocking", "experimental_thread_pool"):
        try:
            value = getattr(behavior, name)
        except Exception:  # noqa: BLE001 - not set
            continue
        setattr(traced, name, value)
    return traced


def _traced_serializer(serializer, serving: _Serving, streaming: bool):
    """The handler's response serializer; a failure (grpc sends INTERNAL) ends the span with it."""

    def serialize(response):
        try:
            data = serializer(response)
        except BaseException as exc:
            call = serving.call
            if call is not None:
                call.unsent(exc)
            raise
        call = serving.call
        if call is not None:
            if data is None:  # grpc takes it for a failure too
                call.unsent(None)
            elif not streaming:
                call.finish()
        return data

    return serialize


class _ServerCall:
    """One RPC's SERVER span, ended once: by the handler's end or by the RPC's termination."""

    __slots__ = ("context", "done", "lock", "rpc")

    def __init__(self, rpc: rpc_span.RpcSpan, context) -> None:
        self.rpc = rpc
        self.context = context
        self.lock = threading.Lock()
        self.done = False

    @classmethod
    def start(cls, serving: _Serving, context) -> _ServerCall | None:
        try:
            rpc = rpc_span.start_server(serving.method, context.invocation_metadata(), context.peer(), attach=False)
        except Exception:  # noqa: BLE001 - a context that is not grpc's
            return None
        if rpc is None:
            return None
        rpc.set_server(serving.ports)
        call = cls(rpc, context)
        try:
            context.add_callback(call.terminated)
        except Exception:  # noqa: BLE001 - the span ends with the handler only
            pass
        return call

    def _claim(self) -> bool:
        with self.lock:
            if self.done:
                return False
            self.done = True
            return True

    def finish(self) -> None:
        """The handler (or its response stream) ended normally."""
        if not self._claim():
            return
        try:
            context = self.context
            code = context.code()
            if code is None:
                if not context.is_active():
                    code = grpc_common.cancellation_code(self.context)
                else:
                    code = OK
            self.rpc.set_code(code, _text(context.details()))
        except Exception:  # noqa: BLE001 - the span ends without a code
            pass
        self.rpc.end()

    def failed(self, exc: BaseException) -> None:
        """The handler (or its response stream) raised ``exc``."""
        if not self._claim():
            return
        try:
            context = self.context
            code = context.code()
            if code is not None and type(exc) is Exception and not exc.args:
                self.rpc.set_code(code, _text(context.details()))  # context.abort(code, details)
            elif code is None and not context.is_active():
                self.rpc.fail(exc, grpc_common.cancellation_code(self.context))  # the call's end, seen by the handler
            else:
                self.rpc.fail(exc, code)  # code None: UNKNOWN, as grpc sends
        except Exception:  # noqa: BLE001
            pass
        self.rpc.end()

    def unsent(self, exc: BaseException | None) -> None:
        """The response serializer raised ``exc`` (or gave None): grpc aborts the call."""
        if not self._claim():
            return
        try:
            context = self.context
            # What grpc sends: the code and details the handler set, or INTERNAL and its words.
            code, details = context.code(), _text(context.details())
            self.rpc.set_code(INTERNAL if code is None else code, "Failed to serialize response!" if details is None else details)
            if exc is not None:
                self.rpc.fail(exc)
        except Exception:  # noqa: BLE001
            pass
        self.rpc.end()

    def terminated(self) -> None:
        """grpc's callback at the RPC's end: a span still open then was cancelled."""
        if not self._claim():
            return
        try:
            self.rpc.set_code(grpc_common.cancellation_code(self.context))
        except Exception:  # noqa: BLE001
            pass
        self.rpc.end()

    def sending(self, send_response):
        def send(response):
            if response is None:  # the stream's end: grpc sends the status
                self.finish()
            return send_response(response)

        return send


class _ResponseStream:
    """A response iterator whose ``next()`` runs under the SERVER span, which ends with it."""

    __slots__ = ("_call", "_iterator")

    def __init__(self, iterator, call: _ServerCall) -> None:
        self._iterator = iterator
        self._call = call

    def __iter__(self):
        return self

    def __next__(self):
        rpc = self._call.rpc
        rpc.attach()
        try:
            response = next(self._iterator)
        except StopIteration:
            rpc.detach()
            self._call.finish()
            raise
        except BaseException as exc:
            rpc.detach()
            self._call.failed(exc)
            raise
        rpc.detach()
        return response

    next = __next__

    def close(self) -> None:
        try:
            close = getattr(self._iterator, "close", None)
            if close is not None:
                close()
        finally:
            self._call.finish()


def _text(details) -> str | None:
    if isinstance(details, bytes):
        return details.decode("utf-8", "replace")
    return details
