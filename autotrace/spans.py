"""The life of a span the agent starts, shared by every kind: start, enrich, end, never raise.

A span kind's module (:mod:`~autotrace.server_span`, :mod:`~autotrace.client_span`,
:mod:`~autotrace.rpc_span`, and those of the kinds to come: databases, messaging) starts
its spans with :func:`new`, after its own checks, and hands them out in a
:class:`SpanHandle` subclass. A hook of a kind that needs no checks of its own starts its
span in one call::

    from autotrace import spans

    call = spans.start("autotrace.db.sqlite", "SELECT shop", "CLIENT", {"db.system.name": "sqlite"})
    if call is None:  # instrumentation suppressed, or the span could not be started
        return original(*args)
    try:
        result = original(*args)
    except BaseException as exc:
        call.fail(exc, spans.error_type(exc))  # status ERROR, error.type, the exception event
        call.close()
        raise
    call.set_attributes({"db.response.returned_rows": len(result)})
    call.close()  # end the span, leave its context
    return result

The kind is given by name (``"CLIENT"``, ``"PRODUCER"`` ...): the API's ``SpanKind`` is
only there once :func:`spans.start` has loaded it. Nothing here raises into the app: a
failure is one warning line (:func:`report`), and the app's call goes on.
"""

from __future__ import annotations

from . import _log, api, config

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable, Iterable, Mapping, Sequence, TypeVar

    from opentelemetry import context, trace

    Lookup = Callable[[str], "Sequence[str]"]  # header name (lower-case) -> its values
    Handle = TypeVar("Handle", bound="SpanHandle")


class SpanHandle:
    """A span the agent started, with its context: the part server, client and RPC spans share.

    Its methods never raise; ``end`` is idempotent.
    """

    __slots__ = ("span", "context", "_token", "_ended")
    WHAT = "a span"  # for the one log line when recording fails

    def __init__(self, span: trace.Span, ctx: context.Context, token: object = None) -> None:
        self.span = span
        self.context = ctx  # the span current (and the hook's marks)
        self._token = token
        self._ended = False

    @property
    def ended(self) -> bool:
        return self._ended

    def attach(self) -> None:
        """Make the span's context current in this thread or task."""
        try:
            self._token = api.set_current(self.context)
        except Exception as exc:  # noqa: BLE001
            self.report(exc)

    def detach(self) -> None:
        """Make it no longer current (in the thread or task that attached it)."""
        token, self._token = self._token, None
        if token is not None:
            api.detach(token)  # detached from another context: nothing to undo

    def set_attributes(self, attributes: Mapping[str, object]) -> None:
        """Add attributes to the span (what became known during the operation)."""
        try:
            set_known(self.span, attributes)
        except Exception as exc:  # noqa: BLE001
            self.report(exc)

    def end(self) -> None:
        if self._ended:
            return
        self._ended = True
        try:
            self.span.end()
        except Exception as exc:  # noqa: BLE001
            self.report(exc)

    def close(self) -> None:
        """End the span and leave its context (the usual end of a wrapper)."""
        # end() and detach(), inline (a subclass that changes either gets _close_calls).
        if not self._ended:
            self._ended = True
            try:
                self.span.end()
            except Exception as exc:  # noqa: BLE001
                self.report(exc)
        token = self._token
        if token is not None:
            self._token = None
            api.detach(token)

    def _close_calls(self) -> None:
        """:meth:`close` through the subclass's own ``end`` and ``detach``."""
        self.end()
        self.detach()

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.close is SpanHandle.close and (cls.end is not SpanHandle.end or cls.detach is not SpanHandle.detach):
            cls.close = SpanHandle._close_calls  # type: ignore[method-assign]

    def fail(self, exc: BaseException, error_type: str) -> None:
        """Record an exception that ended the operation: status ERROR, ``error.type``, an event."""
        if self._ended:
            return
        try:
            mark_error(self.span, error_type, exception_description(exc))
            self.span.record_exception(exc)
        except Exception as error:  # noqa: BLE001
            self.report(error)

    def report(self, exc: BaseException) -> None:
        """The one log line for a failure to record this span (the application goes on)."""
        report(exc, self.WHAT)


def new(tracer: str, name: str, kind: trace.SpanKind, parent: context.Context, attributes=None, links=None) -> tuple[trace.Span, context.Context]:
    """Start a span under ``parent``: the span, and ``parent`` with the span current (not attached).

    For a span kind's own start function, after its checks (API loaded, instrumentation
    not suppressed), which then hands the two out in its :class:`SpanHandle` subclass. It
    raises what the SDK raises: the caller reports it. ``tracer`` names the agent's
    tracer (``autotrace.http.server`` ...). ``attributes``: a dict of the hook's own
    values, or a function returning one, called only if the span is recorded.

    The span is a light one (:mod:`autotrace.light_span`, imported here at the first
    span) when the tracer is an SDK tracer whose work it can reproduce, else the
    tracer's own.
    """
    span = new_span(tracer, name, kind, parent, attributes, links)
    return span, api.with_span(span, parent)


def new_span(tracer: str, name: str, kind: trace.SpanKind, parent: context.Context, attributes=None, links=None) -> trace.Span:
    """:func:`new`'s span alone, for a kind that builds its context itself (with
    :func:`autotrace.api.with_span`: the span and the kind's own mark in one copy)."""
    found = api.tracers.get(tracer)  # not api.tracer(): a call less on every request
    if found is not None and _compiled is not None and not links:
        span = _compiled(found, name, kind, parent, attributes)  # start_span's common case, in C
        if span is not None:
            return span
    return (_light or _load_light())(found or api.tracer(tracer), name, kind, parent, attributes, links)


_light = None  # light_span.start_span, imported at the first span (it imports the SDK)
# autotrace._speedups.start_light when built (light_span.compiled_start): start_span's common
# case, None for anything else (start_span then does it).
_compiled = None
# autotrace._speedups.start_attached when built: start's common case (a SpanHandle, attached).
_attached = None


def _load_light():
    global _light, _compiled, _attached, start, new_span
    from . import light_span

    _compiled = light_span.compiled_start
    if _compiled is not None:
        from .otlp_encode import speedups

        methods = speedups.register_handle(
            SpanHandle, SpanHandle.__slots__, start_py, new_span_py, _close_py, _set_attributes_py, _kinds
        )
        if methods:
            _attached = speedups.start_attached
            # Their common case in C (autotrace/_speedups.c), the Python ones (start_py,
            # new_span_py, and SpanHandle's below) for anything else.
            SpanHandle.close, SpanHandle.set_attributes = methods  # type: ignore[method-assign]
            start, new_span = speedups.start_handle, speedups.new_span
    _light = light_span.start_span
    return _light


def set_known(span: trace.Span, attributes: Mapping[str, object]) -> None:
    """Set attributes the hook produced itself (its own keys, values of plain types).

    On a light span they are kept without the SDK's per-value cleaning; on any other
    span this is ``set_attributes``. Raises what the SDK raises: the caller reports it.
    """
    known = getattr(span, "set_known", None)
    if known is not None:
        known(attributes)
    else:
        span.set_attributes(attributes)


_kinds: dict[str, Any] = {}  # SpanKind members by name (start's kind given as a str)


def start(
    tracer: str,
    name: str,
    kind: trace.SpanKind | str,
    attributes: Mapping[str, object] | None = None,
    parent: context.Context | None = None,
    links: Sequence[trace.Link] | None = None,
    attach: bool = True,
    handle: type[Handle] = SpanHandle,
) -> Handle | None:
    """Start a span (a child of ``parent``, the current context by default), or None; never raises.

    None when instrumentation is suppressed in ``parent`` (the agent's exporter runs so)
    or the span could not be started (one warning line). ``kind``: a ``SpanKind`` or its
    name. With ``attach`` the span's context is made current at once (:meth:`SpanHandle.close`
    leaves it).
    """
    try:
        if not api.loaded:
            api.load()
        if parent is None:
            parent = api.get_current()
        if parent.get(api.SUPPRESS_INSTRUMENTATION):  # api.suppressed, inline
            return None
        if isinstance(kind, str):
            found = _kinds.get(kind)
            if found is None:
                found = _kinds[kind] = api.SpanKind[kind]  # KeyError for another name: reported
            kind = found
        found = api.tracers.get(tracer)
        span = None
        if found is not None and _attached is not None and not links and attach and handle is SpanHandle:
            started = _attached(found, name, kind, parent, attributes)  # all of the below, in C
            if started is not None:
                return started
        if found is not None and _compiled is not None and not links:
            span = _compiled(found, name, kind, parent, attributes)  # new_span's, without its call
        if span is None:
            span = new_span(tracer, name, kind, parent, attributes, links or None)
        ctx = api.with_span(span, parent)
        if handle is SpanHandle and attach:
            started = SpanHandle(span, ctx)
            try:
                started._token = api.set_current(ctx)  # attach(), inline
            except Exception as exc:  # noqa: BLE001
                started.report(exc)
            return started
        started = handle(span, ctx)
        if attach:
            started.attach()
        return started
    except Exception as exc:  # noqa: BLE001 - never fail the app's call
        report(exc, handle.WHAT)
        return None


# The references: where autotrace._speedups is built, _load_light makes start, new_span,
# SpanHandle.close and SpanHandle.set_attributes their compiled twins, which call these
# for anything but their common case.
start_py = start
new_span_py = new_span
_close_py = SpanHandle.close
_set_attributes_py = SpanHandle.set_attributes


def mark_error(span: trace.Span, error_type: str, description: str | None = None) -> None:
    """Status ERROR with ``description``, and ``error.type``; raises what the SDK raises."""
    set_known(span, {"error.type": error_type})
    span.set_status(api.Status(api.StatusCode.ERROR, description))


def exception_description(exc: BaseException) -> str:
    """``"ValueError: message"``: the status description of an exception that ended an operation."""
    try:
        return f"{type(exc).__name__}: {exc}"
    except Exception:  # noqa: BLE001 - an exception whose str() fails
        return type(exc).__name__


def error_type(exc: BaseException) -> str:
    """The exception's class, fully qualified (``requests.exceptions.ConnectTimeout``; builtins bare)."""
    cls = type(exc)
    module = getattr(cls, "__module__", None)
    return cls.__qualname__ if module in (None, "builtins") else f"{module}.{cls.__qualname__}"


def capture_headers(span, prefix: str, wanted: list[str], pairs: Iterable[tuple[str, str]] | None, lookup: Lookup | None = None) -> None:
    """Record the named headers as ``{prefix}{name}`` list attributes, sanitized.

    From ``lookup`` (lower-case name -> values) when given, else from ``pairs``. Values
    of names ``OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS`` matches are
    replaced. Never raises.
    """
    try:
        values: dict[str, list[str]] = {}
        if lookup is not None:
            for name in wanted:
                found = list(lookup(name))
                if found:
                    values[name] = found
        else:
            wanted_set = set(wanted)
            for name, value in pairs or ():
                lowered = name.lower()
                if lowered in wanted_set:
                    values.setdefault(lowered, []).append(value)
        sanitize = config.http_settings().sanitize
        for name, found in values.items():
            if sanitize is not None and sanitize.fullmatch(name):
                found = ["[REDACTED]"] * len(found)
            span.set_attribute(prefix + name, found)
    except Exception as exc:  # noqa: BLE001
        report(exc, "a server span", "the request", "server-span")


def report(exc: BaseException, what: str = "a span", unaffected: str = "the application", key: str = "span") -> None:
    """One warning line, once per ``key`` and exception class: ``what`` could not be recorded."""
    _log.warn_once(
        f"{key}:{type(exc).__name__}",
        "%s could not be recorded (%s: %s); %s is not affected",
        what,
        type(exc).__name__,
        exc,
        unaffected,
    )


def run(handle: Any, original: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run ``original(*args, **kwargs)`` inside ``handle``, a started call whose ``fail``
    takes the exception alone (a database call, a message's send or process): its result
    untouched; an exception recorded (``handle.fail(exc)``) and re-raised untouched. The
    span is closed either way."""
    try:
        result = original(*args, **kwargs)
    except BaseException as exc:
        handle.fail(exc)
        handle.close()
        raise
    handle.close()
    return result
