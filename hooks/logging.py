"""logging: every log record names the trace and span it was logged in.

Waits for ``logging`` (usually imported before or during the agent's start-up:
patched at once). A ``LogRecord`` factory is set that chains the one in place (the
default, or one the app set before the agent) and adds the fields
opentelemetry-instrumentation-logging adds, under the same names (and
``Logger.makeRecord`` is wrapped, see below):

- ``otelTraceID``: the current span's trace id, 32 hex digits;
- ``otelSpanID``: its span id, 16 hex digits;
- ``otelTraceSampled``: whether it is sampled (a bool);
- ``otelServiceName``: the service name of the spans (OTEL_SERVICE_NAME, else the one
  the agent derived; the app's own TracerProvider's when it set one).

Outside a span the ids are all zeros (``"0" * 32``, ``"0" * 16``) and
``otelTraceSampled`` is False. So a format such as ``"%(otelTraceID)s %(message)s"``
works in an app with no tracing code. Before the OpenTelemetry API has been imported
(nothing traced yet in this process) no span can be current: the zeros are set at the
cost of two lookups, and nothing is imported.

The app's own factories: one set *before* the agent is called by ours. One set after,
that chains the factory in place (``old = logging.getLogRecordFactory()`` ... ``old(...)``),
as the logging documentation shows, sees the fields on the record ``old()`` returns.
One set after that does not chain replaces ours; ``Logger.makeRecord`` (wrapped) then
adds the fields to what it returns, so a record logged through a logger always has
them. ``logging.makeLogRecord`` (what a socket receiver rebuilds records with) calls the
factory in place: its records have them while ours is in place, and the sender's
values win. A record made by ``LogRecord(...)`` directly, or by a factory that does not
chain outside a logger, lacks them.

``extra=`` naming the fields (``logger.info(..., extra={"otelTraceID": ...})``) works as
without the agent: the app's values are the record's (logging itself refuses an
``extra`` key the record has already; the wrapped ``makeRecord`` sets these after it).

``OTEL_PYTHON_LOG_CORRELATION=true`` (default false) also puts the ids into the format
``logging.basicConfig()`` uses when the app gives none (called explicitly, or implicitly
by ``logging.warning(...)`` and friends with no handler configured), as
opentelemetry-instrumentation-logging does: :data:`DEFAULT_FORMAT`, or the value of
``OTEL_PYTHON_LOG_FORMAT`` if set (a %-style format). A format the app passes is kept.
Unlike that instrumentation, the agent does not call ``basicConfig`` itself: an app
that configures logging its own way is not given a second handler. A record that
reaches a handler with that format without the fields (see above) is written with the
ids of "outside a span", never a "--- Logging error ---". A named logger used before
any handler is configured writes through ``logging.lastResort`` (Python's "last resort"
handler, message only): with correlation on it writes that same format, ids included.
"""

from __future__ import annotations

import os
import sys

from autotrace import _log, config, provider
from autotrace.patching import unwrap_function, wrap_function

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType

# opentelemetry-instrumentation-logging's default format.
DEFAULT_FORMAT = (
    "%(asctime)s %(levelname)s [%(name)s] [%(filename)s:%(lineno)d] "
    "[trace_id=%(otelTraceID)s span_id=%(otelSpanID)s "
    "resource.service.name=%(otelServiceName)s trace_sampled=%(otelTraceSampled)s] - %(message)s"
)

ZERO_TRACE_ID = "0" * 32
ZERO_SPAN_ID = "0" * 16

FIELDS = ("otelTraceID", "otelSpanID", "otelTraceSampled", "otelServiceName")
_FIELD_SET = frozenset(FIELDS)

CORRELATION_ENV = "OTEL_PYTHON_LOG_CORRELATION"  # read by config.log_correlation()
FORMAT_ENV = "OTEL_PYTHON_LOG_FORMAT"

# Marks our factory; holds the factory it chains.
_PREVIOUS = "__autotrace_previous_factory__"

# What patch() changed in the logging module, for unpatch() (tests).
_saved_format: tuple | None = None  # (BASIC_FORMAT, _STYLES["%"]) before
_last_resort: tuple | None = None  # (logging.lastResort, the formatter given to it)


def patch(module: ModuleType) -> None:
    current = module.getLogRecordFactory()
    if getattr(current, _PREVIOUS, None) is None:
        module.setLogRecordFactory(_make_factory(current))
    wrap_function(module.Logger, "makeRecord", _wrap_make_record)
    if config.log_correlation():
        fmt = _default_format(module)
        if _set_default_format(module, fmt):
            _format_last_resort(module, fmt)


def unpatch(module: ModuleType) -> None:
    """Put back the factory and the default format (for tests).

    The factory is put back only while ours is the one in place (an app's factory set
    after it is left).
    """
    global _saved_format, _last_resort
    current = module.getLogRecordFactory()
    previous = getattr(current, _PREVIOUS, None)
    if previous is not None:
        module.setLogRecordFactory(previous)
    unwrap_function(module.Logger, "makeRecord")
    if _saved_format is not None:
        module.BASIC_FORMAT, module._STYLES["%"] = _saved_format  # noqa: SLF001
        _saved_format = None
    if _last_resort is not None:
        handler, formatter = _last_resort
        if handler.formatter is formatter:
            handler.setFormatter(None)
        _last_resort = None


def _fields() -> tuple:
    """The four fields' values here and now; those of "outside a span" if a lookup fails."""
    try:
        ids = _current_ids()
    except Exception:  # noqa: BLE001 - the record still gets the fields, as outside a span
        ids = _NO_SPAN
    try:
        name = _service_name()
    except Exception:  # noqa: BLE001
        name = ""
    return (*ids, name)


def _make_factory(previous):
    def record_factory(*args, **kwargs):
        record = previous(*args, **kwargs)
        trace_id, span_id, sampled, name = _fields()
        try:
            record.otelTraceID = trace_id
            record.otelSpanID = span_id
            record.otelTraceSampled = sampled
            record.otelServiceName = name
        except Exception:  # noqa: BLE001 - not a LogRecord: the app's factory's business
            pass
        return record

    setattr(record_factory, _PREVIOUS, previous)
    return record_factory


def _wrap_make_record(original):
    """``Logger.makeRecord``: ``extra=`` may name the fields (the app's values win); none is missing.

    Logging refuses an ``extra`` key the record already has, and the factory has set the
    fields by then: they are taken out of ``extra`` and set after, as logging would have.
    A record whose factory did not set them (an app's factory that does not chain) gets
    them here.
    """
    fields = _FIELD_SET

    def makeRecord(self, name, level, fn, lno, msg, args, exc_info, func=None, extra=None, sinfo=None, **more):  # noqa: N802
        own = None
        if extra:
            try:
                if not fields.isdisjoint(extra):
                    own = {key: extra[key] for key in extra if key in fields}
                    extra = {key: extra[key] for key in extra if key not in fields}
            except Exception:  # noqa: BLE001 - an odd mapping: logging says what is wrong with it
                own = None
        record = original(self, name, level, fn, lno, msg, args, exc_info, func, extra, sinfo, **more)
        try:
            values = record.__dict__
            if "otelTraceID" not in values:
                for key, value in zip(FIELDS, _fields()):
                    values.setdefault(key, value)
            if own:
                values.update(own)
        except Exception:  # noqa: BLE001 - not a LogRecord: the app's factory's business
            pass
        return record

    return makeRecord


_NO_SPAN = (ZERO_TRACE_ID, ZERO_SPAN_ID, False)

# How to find the current span: (opentelemetry.context.get_current, the API's own key
# of the span in a Context). One dict lookup rather than get_current_span()'s three
# calls. Found once the tracing API is imported; None until then.
_lookup: tuple | None = None

# The last span context named, with its ids as text: the lines logged in one span
# format its ids once. One tuple, replaced whole (threads read it without a lock).
_last: tuple = (None,) + _NO_SPAN


def _current_ids() -> tuple[str, str, bool]:
    """The current span's trace id, span id (hex) and sampled flag; zeros outside a span.

    Nothing is imported and no lock taken here, unlike :func:`autotrace.carry.capture`:
    a record is also made while the API itself is being imported (it logs a propagator
    that fails to load), and loading the API from there would wait on the import lock
    it holds. Until the API's trace module is imported, no span can be current.
    """
    global _last
    lookup = _lookup
    if lookup is None:
        if "opentelemetry.trace.propagation" not in sys.modules:
            return _NO_SPAN  # the tracing API not imported: no span anywhere
        lookup = _find_lookup()
        if lookup is None:
            return _NO_SPAN
    get_current, key = lookup
    span = get_current().get(key)
    if span is None:
        return _NO_SPAN
    span_context = span.get_span_context()
    last = _last
    if last[0] is span_context:
        return last[1:]
    ids = (
        span_context.trace_id.to_bytes(16, "big").hex(),
        span_context.span_id.to_bytes(8, "big").hex(),
        bool(span_context.trace_flags.sampled),
    )
    _last = (span_context,) + ids
    return ids


def _find_lookup() -> tuple | None:
    """(get_current, span key) once both modules are fully imported, else None."""
    global _lookup
    key = getattr(sys.modules.get("opentelemetry.trace.propagation"), "_SPAN_KEY", None)
    get_current = getattr(sys.modules.get("opentelemetry.context"), "get_current", None)
    if key is None or get_current is None:
        return None  # being imported right now (or an API without that key: no ids)
    _lookup = (get_current, key)
    return _lookup


# The service name, and the state it was found in: found again only when where spans
# go may have changed. One tuple, replaced whole.
_name_cache: tuple = (None, "")


def _service_name() -> str:
    global _name_cache
    state = provider.state()
    key = state
    if state == "set up":  # the app may have handed its own provider over since
        key = _app_provider() or state
    cached = _name_cache
    if cached[0] is key:
        return cached[1]
    name, final = _find_service_name(state)
    if final:
        _name_cache = (key, name)
    return name


def _find_service_name(state: str) -> tuple[str, bool]:
    """The service name of the spans, and whether it can be kept while ``state`` holds.

    The API is not called (its calls may log, and this runs inside a log call): the
    provider the app set is read where the API keeps it.
    """
    agent_name = provider.service_name()
    if agent_name and state != "declined":
        app_provider = _app_provider() if state == "set up" else None
        if app_provider is None:
            return agent_name, True
        return _resource_service_name(app_provider) or agent_name, True
    # The app's provider (it set one before the agent set its own), or no agent at all.
    tracer_provider = getattr(sys.modules.get("opentelemetry.trace"), "_TRACER_PROVIDER", None)
    if tracer_provider is None:
        return agent_name or os.environ.get("OTEL_SERVICE_NAME", "").strip(), False
    return _resource_service_name(tracer_provider) or agent_name or "", True


def _app_provider():
    """The provider the app handed over to, if the agent's SDK is set up (never imports it)."""
    sdk = sys.modules.get("autotrace.sdk")
    return sdk.app_provider() if sdk is not None else None


def _resource_service_name(tracer_provider) -> str:
    try:
        return str(tracer_provider.resource.attributes.get("service.name") or "")
    except Exception:  # noqa: BLE001 - a provider without a resource
        return ""


def _default_format(module: ModuleType) -> str:
    fmt = os.environ.get(FORMAT_ENV, "").strip()
    if not fmt:
        return DEFAULT_FORMAT
    try:
        module.PercentStyle(fmt).validate()
    except Exception:  # noqa: BLE001 - basicConfig() would raise it into the app
        _log.warn_once(
            FORMAT_ENV,
            "%s=%r is not a valid %%-style logging format; using the default %r",
            FORMAT_ENV,
            fmt,
            DEFAULT_FORMAT,
        )
        return DEFAULT_FORMAT
    return fmt


def _set_default_format(module: ModuleType, fmt: str) -> bool:
    """basicConfig() reads its default %-format from ``_STYLES["%"]``; BASIC_FORMAT names it.

    The style class there (what every %-format ``Formatter`` is made with) is replaced by
    a subclass that fills in the fields a record lacks, for ``fmt`` only.
    """
    global _saved_format
    styles = getattr(module, "_STYLES", None)
    entry = styles.get("%") if isinstance(styles, dict) else None
    if not isinstance(entry, tuple) or len(entry) != 2 or not isinstance(entry[0], type):
        _log.logger.debug("logging: unknown layout of logging._STYLES; %s left out", CORRELATION_ENV)
        return False
    if _saved_format is None:
        _saved_format = (module.BASIC_FORMAT, entry)
    base = _saved_format[1][0]
    styles["%"] = (_filling_style(base, fmt), fmt)
    module.BASIC_FORMAT = fmt
    return True


def _filling_style(base: type, fmt: str) -> type:
    """``base`` (logging's PercentStyle), giving a record that lacks the fields zeros, for ``fmt``."""

    class CorrelatedPercentStyle(base):
        def __init__(self, *args, **kwargs) -> None:
            super().__init__(*args, **kwargs)
            self._autotrace_fill = getattr(self, "_fmt", None) == fmt

        def format(self, record):
            if self._autotrace_fill and "otelTraceID" not in getattr(record, "__dict__", ()):
                record = _WithFields(record)
            return super().format(record)

    return CorrelatedPercentStyle


class _WithFields:
    """A record's attributes plus the fields it lacks, as outside a span (for formatting only)."""

    def __init__(self, record) -> None:
        self.__dict__.update(zip(FIELDS, (*_NO_SPAN, "")))
        self.__dict__.update(record.__dict__)


def _format_last_resort(module: ModuleType, fmt: str) -> None:
    """``logging.lastResort`` (message only) writes ``fmt`` instead, if no one changed it."""
    global _last_resort
    handler = getattr(module, "lastResort", None)
    if _last_resort is not None or handler is None or getattr(handler, "formatter", False) is not None:
        return
    try:
        formatter = module.Formatter(fmt)
        handler.setFormatter(formatter)
    except Exception:  # noqa: BLE001 - left as it is
        return
    _last_resort = (handler, formatter)
