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

from autotrace import api, grpc_common, rpc_span
from autotrace.grpc_common import ServerPorts, cancellation_code, with_interceptors
from autotrace.patching import wrap_function
from autotrace.rpc_span import CANCELLED, OK, UNIMPLEMENTED, UNKNOWN, status_code

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType

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
    wrap_function(module, "server", lambda original: grpc_common.wrap_server(original, _server_interceptor))
    wrap_function(module, "insecure_channel", _channel_wrapper(3))  # target, options, compression, interceptors
    wrap_function(module, "secure_channel", _channel_wrapper(4))  # target, credentials, options, compression, interceptors


# -- servers and channels ------------------------------------------------------------


def _server_interceptor(ports: ServerPorts):
    return _server_interceptor_type(ports)


def _channel_wrapper(index: int):
    def wrap(original):
        def channel(*args, **kwargs):
            try:
                target = args[0] if args else kwargs.get("target")
                args, kwargs = with_interceptors(args, kwargs, index, lambda app: _client_interceptors(app, target))
            except Exception:  # noqa: BLE001
                pass
            return original(*args, **kwargs)

        return channel

    return wrap


def _client_interceptors(app, target) -> list:
    return [*(app or ()), *(kind(target) for kind in _client_interceptor_types)]


def _define_interceptors(aio) -> None:
    """Our interceptor classes, subclasses of this grpc.aio's (grpc checks with isinstance)."""
    global _aio, _server_interceptor_type, _client_interceptor_types, _recording_type
    if _server_interceptor_type is not None and _aio is aio:
        return

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

    for kind in (UnaryUnaryInterceptor, UnaryStreamInterceptor, StreamUnaryInterceptor, StreamStreamInterceptor):
        kind.__module__ = __name__
        kind.__qualname__ = kind.__name__
    _aio = aio
    _server_interceptor_type = grpc_common.server_interceptor_type(aio.ServerInterceptor, _intercept_service)
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
        rpc.report(exc)
        return details


def _client_done(rpc: rpc_span.RpcSpan, call) -> None:
    """A call's done callback: its final status on the span, then the end."""
    try:
        status = call._cython_call._status  # what grpc itself reads when it raises AioRpcError
        if status is not None:
            rpc.set_code(status.code(), status.details())
        elif call.cancelled():
            rpc.set_code(CANCELLED)
    except Exception:  # noqa: BLE001 - another grpc's call: ask it (a coroutine)
        try:
            task = asyncio.ensure_future(_client_done_later(rpc, call))
            _asking.add(task)  # the loop keeps only a weak reference
            task.add_done_callback(_asking.discard)
            return
        except Exception as exc:  # noqa: BLE001
            rpc.report(exc)
    rpc.end()


_asking: set = set()


async def _client_done_later(rpc: rpc_span.RpcSpan, call) -> None:
    try:
        rpc.set_code(await call.code(), await call.details())
    except BaseException as exc:  # noqa: BLE001
        rpc.report(exc)
    rpc.end()


def _record_client_exception(rpc: rpc_span.RpcSpan, exc: BaseException) -> None:
    if isinstance(exc, asyncio.CancelledError):
        rpc.set_code(CANCELLED)
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
        return api.attach(self.rpc.context)

    def returned(self) -> None:
        rpc = self.rpc
        if rpc.ended:
            return
        code, details = _handler_status(self.context)
        if self.serialized and status_code(code)[0] in (None, OK):
            return  # grpc serializes the response next (it does not when the code is another)
        rpc.set_code(OK if code is None else code, details)
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
        rpc.set_code(code if status_code(code)[0] else UNKNOWN, details)
        rpc.fail(exc)
        rpc.end()

    def raised(self, exc: BaseException) -> None:
        rpc = self.rpc
        if rpc.ended:
            return
        if isinstance(exc, asyncio.CancelledError):
            rpc.set_code(cancellation_code(self.context))
        else:
            code, details = _handler_status(self.context)
            if _aio is not None and isinstance(exc, _aio.AbortError) and code is not None:
                rpc.set_code(code, details)  # context.abort(code, details): grpc sent them
            else:
                number = status_code(code)[0]
                rpc.fail(exc, code if number else UNKNOWN)  # grpc sends the code set, UNKNOWN if none
        rpc.end()

    def task_done(self, _task) -> None:
        """The RPC's task finished: end the span if the handler did not."""
        rpc = self.rpc
        if rpc.ended:
            return
        if self.started:
            rpc.set_code(cancellation_code(self.context))
        rpc.end()


async def _intercept_service(continuation, handler_call_details, ports: ServerPorts):
    state = _start_server(handler_call_details, ports)
    if state is None:
        return await continuation(handler_call_details)
    rpc = state.rpc
    # Made current for the app's interceptors and, in this same task, the handler: left
    # so when a handler is returned (the RPC's task has a context of its own, gone with it).
    token = api.attach(rpc.context)
    serving = _serving.set(state)
    try:
        handler = await continuation(handler_call_details)
    except BaseException as exc:  # an app interceptor raised: grpc answers CANCELLED or UNKNOWN
        _leave(token, serving)
        if isinstance(exc, asyncio.CancelledError):
            rpc.set_code(CANCELLED)
        else:
            rpc.fail(exc)
        rpc.end()
        raise
    if handler is None:  # grpc answers "Method not found!"
        _leave(token, serving)
        rpc.set_code(UNIMPLEMENTED)
        rpc.end()
        return handler
    try:
        return _wrap_handler(handler, state)
    except Exception as exc:  # noqa: BLE001 - a handler of an unknown kind: served as it is
        rpc.report(exc)
        return handler


def _start_server(handler_call_details, ports: ServerPorts) -> _ServerCall | None:
    try:
        # None when instrumentation is suppressed. The RPC's task inherits the context the
        # server was started in: start_server takes the parent from the metadata only.
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
        rpc_span.report(exc)
        return None


def _wrap_handler(handler, state: _ServerCall):
    behavior, make = grpc_common.handler_behavior(handler, sys.modules["grpc"])
    if behavior is None:
        return handler
    wrapped = (_streaming_behavior if handler.response_streaming else _unary_behavior)(behavior, state)
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
                api.detach(token)
                state.raised(exc)
                raise
            api.detach(token)
            state.returned()
            return response

    else:

        def unary(request, context):  # run in the server's thread pool
            context = _recording(context)
            token = state.enter(context)
            try:
                response = behavior(request, context)
            except BaseException as exc:
                api.detach(token)
                state.raised(exc)
                raise
            api.detach(token)
            state.returned()
            return response

    return unary


def _streaming_behavior(behavior, state: _ServerCall):
    """A wrapper for a behavior with a response stream, of its kind (as grpc.aio tells them)."""
    if inspect.iscoroutinefunction(behavior):  # writes with context.write(): wrapped as a unary one
        return _unary_behavior(behavior, state)
    if inspect.isasyncgenfunction(behavior):

        async def streaming(request, context):
            api.detach(state.enter(context))
            responses = behavior(request, context)
            while True:
                token = state.attach()
                try:
                    response = await responses.__anext__()
                except StopAsyncIteration:
                    api.detach(token)
                    state.returned()
                    return
                except BaseException as exc:
                    api.detach(token)
                    state.raised(exc)
                    raise
                api.detach(token)
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
                api.detach(token)
                state.raised(exc)
                raise
            api.detach(token)
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
            api.detach(token)
            state.returned()
            return
        except BaseException as exc:
            api.detach(token)
            state.raised(exc)
            raise
        api.detach(token)
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


def _leave(token: object, serving) -> None:
    api.detach(token)
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


# The methods of grpc.ServicerContext the proxy passes on as they are. Each must be on the
# class itself: the base class defines them all (abstract, or raising), so __getattr__
# would never be asked for them.
FORWARDED = (
    "invocation_metadata", "peer", "peer_identities", "peer_identity_key", "auth_context",
    "set_compression", "send_initial_metadata", "set_trailing_metadata", "trailing_metadata",
    "code", "details", "disable_next_message_compression", "is_active", "time_remaining", "cancel", "add_callback",
)  # fmt: skip


class _Recording:
    """grpc.aio's context of a sync handler, delegating everything; notes the code and details set.

    What the handler calls goes to grpc's context, with its results and exceptions
    (``code()`` too: grpc's has none). ``abort`` and ``abort_with_status`` are noted
    before grpc's runs (the sync API's abort raises). The class the hook uses,
    ``RecordingContext``, is this one made a ``grpc.ServicerContext`` with the
    :data:`FORWARDED` methods (:func:`_define_recording_context`).
    """

    __slots__ = ()  # the class made from it has the slots

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


def _forwarding(name: str):
    """A method calling the same method of grpc's context."""

    def forward(self, *args, **kwargs):
        return getattr(self._context, name)(*args, **kwargs)

    forward.__name__ = name
    forward.__qualname__ = "RecordingContext." + name
    return forward


def _define_recording_context(grpc) -> type:
    """``RecordingContext``: :class:`_Recording` as a subclass of this grpc's ``ServicerContext``."""
    namespace = {name: _forwarding(name) for name in FORWARDED}
    namespace.update(
        __slots__=("_context", "recorded_code", "recorded_details"),
        __module__=__name__,
        __qualname__="RecordingContext",
        __doc__=_Recording.__doc__,
    )
    base = grpc.ServicerContext
    return type(base)("RecordingContext", (_Recording, base), namespace)
