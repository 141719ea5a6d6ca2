"""grpc.aio: each RPC a server handles is one SERVER span, each RPC a channel sends one CLIENT span.

Waits for ``grpc.aio`` (grpc's own ``__init__`` imports it). Patched are the functions
the app calls to make servers and channels, as attributes of the ``grpc.aio`` module
(``from grpc.aio import insecure_channel`` after the import gets the wrapper too):

- ``grpc.aio.server(...)``: our ``ServerInterceptor`` is put FIRST in ``interceptors``,
  the app's kept after it in their order. grpc.aio gives interceptors control in list
  order, the first one outermost: the SERVER span starts before the app's interceptors
  run and its context is current while they and the handler run.
- ``grpc.aio.insecure_channel(...)`` and ``grpc.aio.secure_channel(...)``: our client
  interceptors (one per call shape, as grpc.aio wants) are put LAST in ``interceptors``.
  grpc.aio runs client interceptors in list order, the first one outermost: ours is the
  innermost, the closest to the wire. The app's interceptors run first (under the app's
  context; the CLIENT span is not started yet); the metadata they add is kept and ours
  (``traceparent`` ...) is added last; an app interceptor that calls on several times
  (retries) makes one CLIENT span per attempt.

SERVER span: it starts when our interceptor is called, with the parent the call's
metadata carries (only that: not the context the server was started in, which grpc.aio
tasks inherit). grpc.aio gives each RPC a task of its own and runs the interceptors and
an async handler in it: the span's context is made current there and left so, and what
the app's interceptors make current under it (``contextvars``, as grpc documents) reaches
the handler; a sync handler runs in the thread pool with the span's context attached.
The span ends when the handler does: with the code the handler set
(``context.code()``, OK if none); the code ``context.abort`` set; UNKNOWN for another
exception (the code grpc sends). The handler's behavior is replaced by a wrapper of the
same kind (coroutine function, async generator function, or sync function run in the
migration thread pool), so grpc runs it as it would the app's. A response stream is
covered to its end: the last message, an exception, or cancellation. Cancellation (the
client cancels, or the deadline passes, and grpc cancels the handler's task) is
recorded as DEADLINE_EXCEEDED when the call's deadline has passed, CANCELLED otherwise,
and the ``CancelledError`` goes on untouched. When the RPC's task finishes and the span
is still open (the task was cancelled while grpc, not the handler, was running: writing
a streamed message; a sync handler still running in its thread), it ends there, with the
same cancellation code. A call that never reached a handler ends without a code (the
request could not be read, the concurrency limit was hit), or with UNIMPLEMENTED when no
handler knows the method. Sync handlers (run in the thread pool) get grpc's context in
a proxy that notes the code and details they set or abort with (grpc's own cannot tell
them), so their span has the status the client gets.

CLIENT span: it starts when our interceptor is called, in the call's interceptor task
(whose context is the app's at the time of the call), and ends when the call is done:
``call.add_done_callback`` with the final status, for every shape; a response stream
ends when the server's status arrives, or when the app cancels the call, or closes the
channel (grpc cancels the calls still open on it). The CLIENT span is not made
current while the call is sent: nothing under our interceptor reads it, and a request
iterator grpc starts consuming there would run under it. Responses, statuses and the
exceptions the app sees (``AioRpcError``: same code and details) are grpc's own; the
call object is grpc's intercepted call, as on any channel with interceptors (whose
``time_remaining()`` grpc does not implement). Instrumentation suppressed (the agent's
exporter calls): the call goes on unchanged, without a span.
"""

from __future__ import annotations

import asyncio
import inspect
import sys
from contextvars import ContextVar

from autotrace import rpc_span, server_span
from autotrace.patching import wrap_function

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType

_OK, _CANCELLED, _UNKNOWN, _DEADLINE_EXCEEDED, _UNIMPLEMENTED = 0, 1, 2, 4, 12

# A call cancelled this close to its deadline (seconds left, as the server sees it) was
# cancelled by the deadline: the client's own deadline fires a moment before the
# server's, and its cancellation reaches the server with the server's still running.
_DEADLINE_SLACK = 0.05

# Made by patch() from the grpc.aio module's classes (its base classes must be grpc's).
_aio = None
_server_interceptor_type: type | None = None
_client_interceptor_types: tuple = ()
_recording_type: type | None = None  # a sync handler's context, recording its status

# The RPC whose SERVER span our interceptor made current in this context (the RPC's own
# task, where grpc.aio runs the interceptors and then an async handler). A plain context
# variable: set once per call, never read outside the agent.
_serving: ContextVar[_ServerCall | None] = ContextVar("autotrace-grpc-aio-serving", default=None)


def patch(module: ModuleType) -> None:
    _define_interceptors(module)
    wrap_function(module, "server", _wrap_server)
    wrap_function(module, "insecure_channel", _channel_wrapper(3))  # target, options, compression, interceptors
    wrap_function(module, "secure_channel", _channel_wrapper(4))  # target, credentials, options, compression, interceptors


# -- servers and channels ------------------------------------------------------------


def _wrap_server(original):
    def server(*args, **kwargs):
        ports = rpc_span.ServerPorts()
        try:
            ours = _server_interceptor_type(ports)
            args, kwargs = _with_interceptors(args, kwargs, 2, lambda app: [ours, *(app or ())])
        except Exception:  # noqa: BLE001 - arguments grpc itself will refuse
            pass
        made = original(*args, **kwargs)
        rpc_span.note_ports(made, ports)
        return made

    return server


def _channel_wrapper(index: int):
    def wrap(original):
        def channel(*args, **kwargs):
            try:
                target = args[0] if args else kwargs.get("target")
                args, kwargs = _with_interceptors(args, kwargs, index, lambda app: _client_interceptors(app, target))
            except Exception:  # noqa: BLE001
                pass
            return original(*args, **kwargs)

        return channel

    return wrap


def _with_interceptors(args: tuple, kwargs: dict, index: int, combine) -> tuple[tuple, dict]:
    """The arguments with ``interceptors`` (positional at ``index``, or by name) combined with ours."""
    if len(args) > index:
        args = args[:index] + (combine(args[index]),) + args[index + 1 :]
    else:
        kwargs = dict(kwargs)
        kwargs["interceptors"] = combine(kwargs.get("interceptors"))
    return args, kwargs


def _client_interceptors(app, target) -> list:
    return [*(app or ()), *(kind(target) for kind in _client_interceptor_types)]


def _define_interceptors(aio) -> None:
    """Our interceptor classes, subclasses of this grpc.aio's (grpc checks with isinstance)."""
    global _aio, _server_interceptor_type, _client_interceptor_types, _recording_type
    if _server_interceptor_type is not None and _aio is aio:
        return

    class ServerInterceptor(aio.ServerInterceptor):
        """One per server: it knows the server's ports."""

        def __init__(self, ports: rpc_span.ServerPorts) -> None:
            self.ports = ports

        async def intercept_service(self, continuation, handler_call_details):
            return await _intercept_service(continuation, handler_call_details, self.ports)

    class _Client:
        def __init__(self, target) -> None:
            self.target = target

    class UnaryUnaryInterceptor(_Client, aio.UnaryUnaryClientInterceptor):
        async def intercept_unary_unary(self, continuation, client_call_details, request):
            return await _intercept_call(self.target, continuation, client_call_details, request)

    class UnaryStreamInterceptor(_Client, aio.UnaryStreamClientInterceptor):
        async def intercept_unary_stream(self, continuation, client_call_details, request):
            return await _intercept_call(self.target, continuation, client_call_details, request)

    class StreamUnaryInterceptor(_Client, aio.StreamUnaryClientInterceptor):
        async def intercept_stream_unary(self, continuation, client_call_details, request_iterator):
            return await _intercept_call(self.target, continuation, client_call_details, request_iterator)

    class StreamStreamInterceptor(_Client, aio.StreamStreamClientInterceptor):
        async def intercept_stream_stream(self, continuation, client_call_details, request_iterator):
            return await _intercept_call(self.target, continuation, client_call_details, request_iterator)

    for kind in (ServerInterceptor, UnaryUnaryInterceptor, UnaryStreamInterceptor, StreamUnaryInterceptor, StreamStreamInterceptor):
        kind.__module__ = __name__
        kind.__qualname__ = kind.__name__
    _aio = aio
    _server_interceptor_type = ServerInterceptor
    _client_interceptor_types = (UnaryUnaryInterceptor, UnaryStreamInterceptor, StreamUnaryInterceptor, StreamStreamInterceptor)
    _recording_type = _define_recording_context(sys.modules["grpc"])


# -- client --------------------------------------------------------------------------


async def _intercept_call(target, continuation, details, request):
    rpc = rpc_span.start_client(_method_name(details.method), target)
    if rpc is None:
        return await continuation(details, request)
    outgoing = _with_propagation(details, rpc)
    try:
        call = await continuation(outgoing, request)
    except BaseException as exc:
        _record_client_exception(rpc, exc)
        rpc.end()
        raise
    try:
        call.add_done_callback(lambda done: _client_done(rpc, done))
    except Exception:  # noqa: BLE001 - not a grpc call object: nothing tells its end
        rpc.end()
    return call


def _method_name(method) -> str:
    if isinstance(method, bytes):
        return method.decode("utf-8", "replace")
    return method if isinstance(method, str) else str(method)


def _with_propagation(details, rpc: rpc_span.RpcSpan):
    """New call details whose metadata carries the CLIENT span (the app's entries kept)."""
    try:
        metadata = details.metadata
        pairs = rpc.outgoing_metadata(metadata)
        if metadata is None or isinstance(metadata, _aio.Metadata):
            new = _aio.Metadata(*pairs)
        elif isinstance(metadata, tuple):
            new = tuple(pairs)
        else:
            new = pairs
        try:
            return details._replace(metadata=new)
        except AttributeError:  # call details an app interceptor made of its own class
            return _aio.ClientCallDetails(details.method, details.timeout, new, details.credentials, details.wait_for_ready)
    except Exception as exc:  # noqa: BLE001 - the call goes on, without propagation
        rpc._report(exc)
        return details


def _client_done(rpc: rpc_span.RpcSpan, call) -> None:
    """A call's done callback: its final status on the span, then the end."""
    try:
        status = call._cython_call._status  # what grpc itself reads when it raises AioRpcError
        if status is not None:
            rpc.set_code(status.code(), status.details())
        elif call.cancelled():
            rpc.set_code(_CANCELLED)
    except Exception:  # noqa: BLE001 - another grpc's call: ask it (a coroutine)
        try:
            task = asyncio.ensure_future(_client_done_later(rpc, call))
            _asking.add(task)  # the loop keeps only a weak reference
            task.add_done_callback(_asking.discard)
            return
        except Exception as exc:  # noqa: BLE001
            rpc._report(exc)
    rpc.end()


_asking: set = set()


async def _client_done_later(rpc: rpc_span.RpcSpan, call) -> None:
    try:
        rpc.set_code(await call.code(), await call.details())
    except BaseException as exc:  # noqa: BLE001
        rpc._report(exc)
    rpc.end()


def _record_client_exception(rpc: rpc_span.RpcSpan, exc: BaseException) -> None:
    if isinstance(exc, asyncio.CancelledError):
        rpc.set_code(_CANCELLED)
        return
    try:
        if isinstance(exc, _aio.AioRpcError):  # grpc's answer: its code and details
            rpc.set_code(exc.code(), exc.details())
    except Exception:  # noqa: BLE001
        pass
    rpc.fail(exc)  # UNKNOWN if no code was set


# -- server --------------------------------------------------------------------------


class _ServerCall:
    """One incoming RPC: its span, and the handler's context once the handler runs."""

    __slots__ = ("context", "rpc", "serialized", "started")

    def __init__(self, rpc: rpc_span.RpcSpan) -> None:
        self.rpc = rpc
        self.context = None
        self.started = False
        self.serialized = False  # a unary response our serializer wrapper serializes: the span ends there

    def enter(self, context) -> object:
        """The handler starts: note its context and peer, make the span current (see attach)."""
        if not self.started:
            self.started = True
            self.context = context
            try:
                self.rpc.set_peer(context.peer())
            except Exception:  # noqa: BLE001 - a context without a peer
                pass
        return self.attach()

    def attach(self) -> object:
        """Make the span current where the handler runs, unless it is already (a token or None).

        In the task where our interceptor ran, the context it left is kept: the span, and
        whatever the app's interceptors made current under it for the handler. Elsewhere
        (a sync handler in the thread pool) the span's context is attached.
        """
        if _serving.get() is self:
            return None
        return _attach(self.rpc)

    def returned(self) -> None:
        rpc = self.rpc
        if rpc.ended:
            return
        code, details = _handler_status(self.context)
        if self.serialized and rpc_span._code(code)[0] in (None, _OK):
            return  # grpc serializes the response next (it does not when the code is another)
        rpc.set_code(_OK if code is None else code, details)
        rpc.end()

    def sent(self) -> None:
        """Our serializer wrapper serialized the unary response."""
        self.serialized = False
        self.returned()

    def unsent(self, exc: BaseException) -> None:
        """The response serializer raised: grpc sends the code the handler set, UNKNOWN if none."""
        rpc = self.rpc
        if rpc.ended:
            return
        code = _handler_status(self.context)[0]
        try:
            details = "Unexpected %s: %s" % (type(exc), exc)  # grpc's words
        except Exception:  # noqa: BLE001 - an exception whose str() fails
            details = None
        rpc.set_code(code if rpc_span._code(code)[0] else _UNKNOWN, details)
        rpc.fail(exc)
        rpc.end()

    def raised(self, exc: BaseException) -> None:
        rpc = self.rpc
        if rpc.ended:
            return
        if isinstance(exc, asyncio.CancelledError):
            rpc.set_code(_cancel_code(self.context))
        else:
            code, details = _handler_status(self.context)
            if _aio is not None and isinstance(exc, _aio.AbortError) and code is not None:
                rpc.set_code(code, details)  # context.abort(code, details): grpc sent them
            else:
                number = rpc_span._code(code)[0]
                rpc.fail(exc, code if number else _UNKNOWN)  # grpc sends the code set, UNKNOWN if none
        rpc.end()

    def task_done(self, _task) -> None:
        """The RPC's task finished: end the span if the handler did not."""
        rpc = self.rpc
        if rpc.ended:
            return
        if self.started:
            rpc.set_code(_cancel_code(self.context))
        rpc.end()


async def _intercept_service(continuation, handler_call_details, ports: rpc_span.ServerPorts):
    state = _start_server(handler_call_details, ports)
    if state is None:
        return await continuation(handler_call_details)
    rpc = state.rpc
    # Made current for the app's interceptors and, in this same task, the handler: left
    # so when a handler is returned (the RPC's task has a context of its own, gone with it).
    token = _attach(rpc)
    serving = _serving.set(state)
    try:
        handler = await continuation(handler_call_details)
    except BaseException as exc:  # an app interceptor raised: grpc answers CANCELLED or UNKNOWN
        _leave(token, serving)
        if isinstance(exc, asyncio.CancelledError):
            rpc.set_code(_CANCELLED)
        else:
            rpc.fail(exc)
        rpc.end()
        raise
    if handler is None:  # grpc answers "Method not found!"
        _leave(token, serving)
        rpc.set_code(_UNIMPLEMENTED)
        rpc.end()
        return handler
    try:
        return _wrap_handler(handler, state)
    except Exception as exc:  # noqa: BLE001 - a handler of an unknown kind: served as it is
        rpc._report(exc)
        return handler


def _start_server(handler_call_details, ports: rpc_span.ServerPorts) -> _ServerCall | None:
    try:
        if not server_span._loaded:  # noqa: SLF001
            server_span._load_api()  # noqa: SLF001
        context = server_span.context
        if context.get_value(context._SUPPRESS_INSTRUMENTATION_KEY):  # noqa: SLF001
            return None
        # The RPC's task inherits the context the server was started in: start_server
        # takes the parent from the metadata only.
        rpc = rpc_span.start_server(handler_call_details.method, handler_call_details.invocation_metadata, None, attach=False)
        if rpc is None:
            return None
        rpc.set_server(ports)
        state = _ServerCall(rpc)
        try:
            asyncio.current_task().add_done_callback(state.task_done)
        except Exception:  # noqa: BLE001 - not run in a task: the handler's wrapper ends it
            pass
        return state
    except Exception as exc:  # noqa: BLE001
        rpc_span._report(exc)
        return None


def _wrap_handler(handler, state: _ServerCall):
    import grpc

    if handler.request_streaming:
        if handler.response_streaming:
            behavior, make = handler.stream_stream, grpc.stream_stream_rpc_method_handler
            wrapped = _streaming_behavior(behavior, state)
        else:
            behavior, make = handler.stream_unary, grpc.stream_unary_rpc_method_handler
            wrapped = _unary_behavior(behavior, state)
    elif handler.response_streaming:
        behavior, make = handler.unary_stream, grpc.unary_stream_rpc_method_handler
        wrapped = _streaming_behavior(behavior, state)
    else:
        behavior, make = handler.unary_unary, grpc.unary_unary_rpc_method_handler
        wrapped = _unary_behavior(behavior, state)
    if behavior is None:
        return handler
    serializer = handler.response_serializer
    if serializer is not None:
        state.serialized = not handler.response_streaming
        serializer = _traced_serializer(serializer, state)
    return make(wrapped, request_deserializer=handler.request_deserializer, response_serializer=serializer)


def _traced_serializer(serializer, state: _ServerCall):
    """The handler's response serializer: a failure ends the span (grpc answers UNKNOWN), so does a unary success."""

    def serialize(response):
        try:
            data = serializer(response)
        except BaseException as exc:
            state.unsent(exc)
            raise
        if state.serialized:
            state.sent()
        return data

    return serialize


def _is_async(behavior) -> bool:
    """What grpc.aio's server checks to run a behavior in the loop rather than a thread."""
    return inspect.isawaitable(behavior) or inspect.iscoroutinefunction(behavior) or inspect.isasyncgenfunction(behavior)


def _unary_behavior(behavior, state: _ServerCall):
    """A wrapper for a behavior with one response (unary-unary, stream-unary), of its kind."""
    if _is_async(behavior):

        async def unary(request, context):
            token = state.enter(context)
            try:
                response = await behavior(request, context)
            except BaseException as exc:
                _detach(token)
                state.raised(exc)
                raise
            _detach(token)
            state.returned()
            return response

    else:

        def unary(request, context):  # run in the server's thread pool
            context = _recording(context)
            token = state.enter(context)
            try:
                response = behavior(request, context)
            except BaseException as exc:
                _detach(token)
                state.raised(exc)
                raise
            _detach(token)
            state.returned()
            return response

    return unary


def _streaming_behavior(behavior, state: _ServerCall):
    """A wrapper for a behavior with a response stream, of its kind (as grpc.aio tells them)."""
    if inspect.iscoroutinefunction(behavior):  # writes with context.write(): wrapped as a unary one
        return _unary_behavior(behavior, state)
    if inspect.isasyncgenfunction(behavior):

        async def streaming(request, context):
            _detach(state.enter(context))
            responses = behavior(request, context)
            while True:
                token = state.attach()
                try:
                    response = await responses.__anext__()
                except StopAsyncIteration:
                    _detach(token)
                    state.returned()
                    return
                except BaseException as exc:
                    _detach(token)
                    state.raised(exc)
                    raise
                _detach(token)
                try:
                    yield response
                except GeneratorExit:  # grpc left the stream (the call was cancelled)
                    state.task_done(None)
                    raise

    else:  # a sync generator, iterated in the server's thread pool

        def streaming(request, context):
            context = _recording(context)
            token = state.enter(context)
            try:
                responses = behavior(request, context)
            except BaseException as exc:
                _detach(token)
                state.raised(exc)
                raise
            _detach(token)
            return _sync_stream(responses, state)

    return streaming


def _sync_stream(responses, state: _ServerCall):
    iterator = None
    while True:
        token = state.attach()
        try:
            if iterator is None:
                iterator = iter(responses)
            response = next(iterator)
        except StopIteration:
            _detach(token)
            state.returned()
            return
        except BaseException as exc:
            _detach(token)
            state.raised(exc)
            raise
        _detach(token)
        try:
            yield response
        except GeneratorExit:
            state.task_done(None)
            raise


def _handler_status(context) -> tuple[object, str | None]:
    """The code and details the handler set on its context (None: none set, or not readable)."""
    if type(context) is _recording_type:
        return context.recorded_code, context.recorded_details or None
    try:
        code = context.code()
    except Exception:  # noqa: BLE001 - the sync handlers' context has no code()
        return None, None
    try:
        details = context.details() or None
    except Exception:  # noqa: BLE001
        details = None
    return code, details


def _cancel_code(context) -> int:
    """DEADLINE_EXCEEDED if the call's deadline has passed, CANCELLED otherwise."""
    try:
        remaining = context.time_remaining() if context is not None else None
    except Exception:  # noqa: BLE001
        remaining = None
    if remaining is not None and remaining <= _DEADLINE_SLACK:
        return _DEADLINE_EXCEEDED
    return _CANCELLED


def _attach(rpc: rpc_span.RpcSpan) -> object:
    try:
        return server_span.context.attach(rpc.context)
    except Exception:  # noqa: BLE001
        return None


def _detach(token: object) -> None:
    if token is not None:
        try:
            server_span.context.detach(token)
        except Exception:  # noqa: BLE001
            pass


def _leave(token: object, serving) -> None:
    _detach(token)
    try:
        _serving.reset(serving)
    except (ValueError, RuntimeError):  # not expected: the same task
        pass


# -- the context of a sync handler -----------------------------------------------------


def _recording(context):
    """A sync handler's context (grpc's, without ``code()``) in a proxy recording its status; fail open."""
    try:
        return _recording_type(context)
    except Exception:  # noqa: BLE001 - the handler gets grpc's own: its status is not recorded
        return context


def _define_recording_context(grpc) -> type:
    class RecordingContext(grpc.ServicerContext):
        """grpc.aio's context of a sync handler, delegating everything; notes the code and details set.

        What the handler calls goes to grpc's context, with its results and exceptions
        (``code()`` too: grpc's has none). ``abort`` and ``abort_with_status`` are noted
        before grpc's runs (the sync API's abort raises).
        """

        __slots__ = ("_context", "recorded_code", "recorded_details")

        def __init__(self, context) -> None:
            self._context = context
            self.recorded_code = None
            self.recorded_details = None

        def set_code(self, code):
            result = self._context.set_code(code)
            self.recorded_code = code
            return result

        def set_details(self, details):
            result = self._context.set_details(details)
            self.recorded_details = details
            return result

        def abort(self, code, details="", *args, **kwargs):
            self._note_abort(code, details)
            return self._context.abort(code, details, *args, **kwargs)

        def abort_with_status(self, status):
            abort_with_status = self._context.abort_with_status
            self._note_abort(getattr(status, "code", None), getattr(status, "details", ""))
            return abort_with_status(status)

        def _note_abort(self, code, details) -> None:
            self.recorded_code = code
            if details:  # grpc keeps the details set before when abort gives none
                self.recorded_details = details

        def __getattr__(self, name):
            if name == "_context":
                raise AttributeError(name)
            return getattr(self._context, name)

        # The rest of grpc.ServicerContext, delegated.
        def invocation_metadata(self):
            return self._context.invocation_metadata()

        def peer(self):
            return self._context.peer()

        def peer_identities(self):
            return self._context.peer_identities()

        def peer_identity_key(self):
            return self._context.peer_identity_key()

        def auth_context(self):
            return self._context.auth_context()

        def set_compression(self, compression):
            return self._context.set_compression(compression)

        def send_initial_metadata(self, initial_metadata):
            return self._context.send_initial_metadata(initial_metadata)

        def set_trailing_metadata(self, trailing_metadata):
            return self._context.set_trailing_metadata(trailing_metadata)

        def trailing_metadata(self):
            return self._context.trailing_metadata()

        def code(self):
            return self._context.code()

        def details(self):
            return self._context.details()

        def disable_next_message_compression(self):
            return self._context.disable_next_message_compression()

        def is_active(self):
            return self._context.is_active()

        def time_remaining(self):
            return self._context.time_remaining()

        def cancel(self):
            return self._context.cancel()

        def add_callback(self, callback):
            return self._context.add_callback(callback)

    RecordingContext.__module__ = __name__
    RecordingContext.__qualname__ = RecordingContext.__name__
    return RecordingContext
