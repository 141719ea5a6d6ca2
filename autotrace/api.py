"""The OpenTelemetry API as the agent uses it: imported at the first request, one handle for every span kind.

Importing this module imports no OpenTelemetry code: hooks import it when the app imports
its web framework or HTTP client, at start-up. :func:`load` imports the API at the first
request (span modules call it, then read these module globals):

- :data:`context`, :data:`trace`, :data:`propagate`: the API's modules;
  :data:`SpanKind`, :data:`Status`, :data:`StatusCode`: its classes;
- :data:`IN_SERVER_SPAN` (value: the request's SERVER span) and :data:`IN_CLIENT_CALL`
  (value: the outgoing call in progress), :data:`IN_DB_CALL` (value: the database or
  cache call in progress, :class:`autotrace.db.DbCall`): the agent's own context keys;
- :data:`SUPPRESS_INSTRUMENTATION` and :data:`SUPPRESS_HTTP_INSTRUMENTATION`: the API's
  keys that turn instrumentation off in a context (the agent's exporter sets the first);
  :func:`suppressed` and :func:`http_suppressed` read them;
- :func:`tracer`: the agent's tracer of a given name (one per span kind, kept in :data:`tracers`);
- :func:`attach` and :func:`detach`: ``context.attach``/``detach`` that never raise;
- :data:`get_current`, :data:`set_current` and :data:`SPAN_KEY`, for the hot paths: the
  current context, making a context current (its token for :func:`detach`), and the key
  the API keeps the current span under (:func:`with_span` builds a span's context in one
  copy). With the API's default runtime context these are its context variable's own
  ``get``/``set``: no layer of calls on every span.

Before the first :func:`load` every name above is None (the keys: their names), and
:data:`loaded` is False. A hot path reads them as module attributes
(``api.context.get_current()``): one lookup each, nothing imported, no call added.

At load the agent's propagators (exact W3C, B3, Jaeger; ``OTEL_PROPAGATORS``) become the
global ones (:func:`autotrace.propagation.install`).
"""

from __future__ import annotations

import threading

from . import _log
from ._version import __version__

# The OpenTelemetry API is imported at the first request, not when a hook imports this
# module (which happens when the app imports its web framework, at start-up).
context = propagate = trace = SpanKind = Status = StatusCode = None  # set by load()

TYPE_CHECKING = False
if TYPE_CHECKING:
    from opentelemetry import context, propagate, trace  # noqa: F811
    from opentelemetry.trace import SpanKind, Status, StatusCode  # noqa: F811

# Context keys, made by load(). IN_SERVER_SPAN is set in the context of a request that
# has its SERVER span: a second server layer (a framework's own WSGI app under a server
# hook, werkzeug's handler under http.server) must not start another one. IN_CLIENT_CALL
# holds the outgoing call in progress, so a lower layer of the same call (urllib3 under
# requests) does not start a second span. IN_DB_CALL holds the database call in progress:
# a lower layer of it (the driver under SQLAlchemy, execute under executemany) starts none.
IN_SERVER_SPAN: object = "autotrace-server-span"
IN_CLIENT_CALL: object = "autotrace-client-call"
IN_DB_CALL: object = "autotrace-db-call"
# The API's own keys (private there: only this module names them).
SUPPRESS_INSTRUMENTATION: object = "suppress_instrumentation"
SUPPRESS_HTTP_INSTRUMENTATION: object = "suppress_http_instrumentation"

loaded = False

# Set by load() (see the module docstring).
get_current = set_current = None
SPAN_KEY: object = None  # None: not known (another API layout), set_span_in_context is used
_variable = None  # the context variable behind the API's default runtime context, if that one
reset_current = None  # its reset (detach's work, for a hot path), None when that is not the runtime context

# Re-entrant: importing the API may start a thread or make a log record, whose hooks
# ask for the API again on the same thread; they then go on without it (see load).
_lock = threading.RLock()
_loading = False


def load() -> None:
    """Import the OpenTelemetry API (once, at the first request).

    Raises what the import raises (a broken install); callers fail open. Called again
    while the import runs on this thread, it returns at once with :data:`loaded` still
    False: the caller goes on without the API.
    """
    global _loading
    with _lock:
        if loaded or _loading:
            return  # loaded, or being loaded further up this thread's stack: not yet usable
        _loading = True
        try:
            _import_api()
        finally:
            _loading = False


def _import_api() -> None:
    global context, propagate, trace, SpanKind, Status, StatusCode, loaded
    global IN_SERVER_SPAN, IN_CLIENT_CALL, IN_DB_CALL, SUPPRESS_INSTRUMENTATION, SUPPRESS_HTTP_INSTRUMENTATION
    from opentelemetry import context as _context, propagate as _propagate, trace as _trace
    from opentelemetry.trace import SpanKind as _SpanKind, Status as _Status, StatusCode as _StatusCode

    context, propagate, trace = _context, _propagate, _trace
    SpanKind, Status, StatusCode = _SpanKind, _Status, _StatusCode
    IN_SERVER_SPAN = _context.create_key("autotrace-server-span")
    IN_CLIENT_CALL = _context.create_key("autotrace-client-call")
    IN_DB_CALL = _context.create_key("autotrace-db-call")
    SUPPRESS_INSTRUMENTATION = _context._SUPPRESS_INSTRUMENTATION_KEY  # noqa: SLF001
    SUPPRESS_HTTP_INSTRUMENTATION = _context._SUPPRESS_HTTP_INSTRUMENTATION_KEY  # noqa: SLF001
    _find_fast_paths(_context, _trace)
    _install_propagators()
    loaded = True


def _find_fast_paths(_context, _trace) -> None:
    """Set :data:`get_current`, :data:`set_current`, :data:`SPAN_KEY` (see the module docstring)."""
    global get_current, set_current, SPAN_KEY, _variable, reset_current
    get_current, set_current = _context.get_current, _context.attach
    try:
        from opentelemetry.context import _RUNTIME_CONTEXT  # noqa: PLC2701
        from opentelemetry.context.contextvars_context import ContextVarsRuntimeContext

        if type(_RUNTIME_CONTEXT) is ContextVarsRuntimeContext:
            _variable = _RUNTIME_CONTEXT._current_context  # noqa: SLF001 - what attach and get_current use
            get_current, set_current, reset_current = _variable.get, _variable.set, _variable.reset
    except Exception:  # noqa: BLE001 - another layout: the API's functions
        pass
    try:
        # The key the API sets the span under, found through its public function.
        keys = list(_trace.set_span_in_context(_trace.INVALID_SPAN, _context.Context()))
        SPAN_KEY = keys[0] if len(keys) == 1 else None
    except Exception:  # noqa: BLE001
        SPAN_KEY = None


def with_span(span: trace.Span, parent: context.Context, key: object = None, value: object = None) -> context.Context:
    """``parent`` with ``span`` current (and ``key`` set to ``value``, when given): one copy.

    What ``set_span_in_context`` and ``set_value`` make, without a copy each. The API must be loaded.
    """
    if SPAN_KEY is None:
        ctx = trace.set_span_in_context(span, parent)
        return ctx if key is None else context.set_value(key, value, ctx)
    values = dict(parent)
    values[SPAN_KEY] = span
    if key is not None:
        values[key] = value
    return context.Context(values)


# The reference: where autotrace._speedups is built, autotrace.light_span makes
# with_span its compiled twin (the same Context, built in C), which calls this one while
# SPAN_KEY is not known.
with_span_py = with_span


def _install_propagators() -> None:
    """Make the agent's propagators (exact W3C, B3, Jaeger; OTEL_PROPAGATORS) the global ones."""
    try:
        from . import config
        from .propagation import install

        install(config.propagator_names())
    except Exception as exc:  # noqa: BLE001 - the API's own propagators stay
        _log.warn_once("propagation-install", "the agent's propagators could not be installed (%s: %s)", type(exc).__name__, exc)


def suppressed(ctx: context.Context | None = None) -> bool:
    """Whether instrumentation is turned off in ``ctx`` (the current context by default).

    The API must be loaded.
    """
    return bool((context.get_current() if ctx is None else ctx).get(SUPPRESS_INSTRUMENTATION))


def http_suppressed(ctx: context.Context) -> bool:
    """Whether HTTP client instrumentation is turned off in ``ctx`` (either key set)."""
    return bool(ctx.get(SUPPRESS_INSTRUMENTATION) or ctx.get(SUPPRESS_HTTP_INSTRUMENTATION))


def attach(ctx: context.Context) -> object:
    """Make ``ctx`` current; the token for :func:`detach`, None if that failed. Never raises."""
    try:
        return set_current(ctx)  # context.attach, or its context variable's own set (see _find_fast_paths)
    except Exception:  # noqa: BLE001 - the work goes on in the context it had
        return None


def detach(token: object) -> None:
    """Undo an :func:`attach` (nothing for None). Never raises: a token of another context is dropped."""
    if token is not None:
        try:
            if _variable is not None:
                _variable.reset(token)
            else:
                context.detach(token)
        except Exception:  # noqa: BLE001
            pass


# The agent's tracers by name, made at their first use (tests clear it, or put their own).
tracers: dict[str, trace.Tracer] = {}


def tracer(name: str) -> trace.Tracer:
    """The agent's tracer ``name`` (``autotrace.http.server`` ...), made once. The API must be loaded."""
    found = tracers.get(name)
    if found is None:
        found = tracers[name] = trace.get_tracer(name, __version__)
    return found
