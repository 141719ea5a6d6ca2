"""Configuration from the environment: standard ``OTEL_*`` variables first, ``AUTOTRACE_*``
only for what OpenTelemetry has no name for.

Every value is validated here, once. A wrong value logs one warning naming the variable
and the value, and the default is used instead; nothing in here raises.
"""

from __future__ import annotations

import os

from . import _log

TYPE_CHECKING = False  # typing is not imported at start-up
if TYPE_CHECKING:
    from typing import Callable, Mapping, TypeVar

    T = TypeVar("T")

PROTOCOLS = ("grpc", "http/protobuf")
EXPORTERS = ("otlp", "console", "console-json", "none")
SAMPLERS = (
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
)
PROPAGATORS = ("tracecontext", "baggage", "b3", "b3multi", "jaeger")  # built in (autotrace.propagation)
DEFAULT_PROPAGATORS = ("tracecontext", "baggage")
COMPRESSIONS = ("gzip", "none")

DEFAULT_PROTOCOL = "http/protobuf"
DEFAULT_GRPC_ENDPOINT = "http://localhost:4317"
DEFAULT_HTTP_ENDPOINT = "http://localhost:4318"
HTTP_TRACES_PATH = "/v1/traces"

# Processes that are not the app: package and environment tools. Matched against the
# program name (script stem or ``-m`` module). ``AUTOTRACE_DENY`` replaces this list.
DEFAULT_DENY = (
    "pip",
    "pipx",
    "ensurepip",
    "venv",
    "virtualenv",
    "build",
    "wheel",
    "twine",
    "setup",
    "autotrace",
)


class Settings:
    """The effective settings (defaults as class attributes; :func:`load` sets the rest)."""

    sdk_disabled: bool = False
    service_name: str | None = None
    resource_attributes: Mapping[str, str] = {}
    exporters: tuple[str, ...] = ("otlp",)
    protocol: str = DEFAULT_PROTOCOL
    endpoint: str = DEFAULT_HTTP_ENDPOINT + HTTP_TRACES_PATH
    headers: Mapping[str, str] = {}
    timeout_s: float = 10.0
    compression: str = "none"
    insecure: bool = True
    sampler: str = "parentbased_always_on"
    sampler_arg: float = 1.0
    propagators: tuple[str, ...] = ("tracecontext", "baggage")
    bsp_schedule_delay_ms: int = 5000
    bsp_max_queue_size: int = 2048
    bsp_max_export_batch_size: int = 512
    bsp_export_timeout_ms: int = 30000
    disabled_hooks: frozenset = frozenset()
    log_level: str = "info"
    shutdown_timeout_s: float = 5.0
    deny: tuple[str, ...] = DEFAULT_DENY
    extra_hooks: tuple[tuple[str, str], ...] = ()

    def __init__(self, **values: object) -> None:
        for name, value in values.items():
            if not hasattr(Settings, name):
                raise TypeError(f"unknown setting {name}")
            setattr(self, name, value)

    def describe(self) -> list[tuple[str, str]]:
        """The effective configuration as (name, value) rows, secrets redacted."""
        return [
            ("sdk_disabled", str(self.sdk_disabled)),
            ("service.name", self.service_name or "(derived)"),
            ("resource", _join(f"{k}={v}" for k, v in self.resource_attributes.items())),
            ("exporters", _join(self.exporters) or "none"),
            ("protocol", self.protocol),
            ("endpoint", redact_url(self.endpoint)),
            ("headers", _join(f"{k}=<redacted>" for k in self.headers)),
            ("timeout", f"{self.timeout_s:g}s"),
            ("compression", self.compression),
            ("insecure", str(self.insecure)),
            ("sampler", f"{self.sampler} (arg {self.sampler_arg:g})"),
            ("propagators", _join(self.propagators) or "none"),
            (
                "batch",
                f"delay {self.bsp_schedule_delay_ms}ms, queue {self.bsp_max_queue_size}, "
                f"batch {self.bsp_max_export_batch_size}, export timeout {self.bsp_export_timeout_ms}ms",
            ),
            ("shutdown flush bound", f"{self.shutdown_timeout_s:g}s"),
            ("disabled hooks", _join(sorted(self.disabled_hooks))),
            ("deny", _join(self.deny)),
            ("extra hooks", _join(f"{m}={h}" for m, h in self.extra_hooks)),
            ("log level", self.log_level),
        ]


def _join(items) -> str:
    return ",".join(items)


def redact_url(url: str) -> str:
    """Drop user and password from a URL (for logs)."""
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
    except ValueError:
        parts = None
    if parts is not None and "@" in parts.netloc:
        host = parts.netloc.rsplit("@", 1)[1]
        return parts._replace(netloc="<redacted>@" + host).geturl()
    if "@" in url:  # not a URL urlsplit understands (no scheme?): hide all up to the "@"
        return "<redacted>@" + url.rsplit("@", 1)[1]
    return url if parts is not None else "<invalid url>"


class _Env:
    """Reads and validates variables; a bad value warns once and yields the default."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ

    def raw(self, name: str) -> str | None:
        value = self.environ.get(name)
        if value is None:
            return None
        value = value.strip()
        return value or None

    def first(self, *names: str) -> tuple[str, str | None]:
        """The first of ``names`` that is set, with its value (signal-specific names first)."""
        for name in names:
            value = self.raw(name)
            if value is not None:
                return name, value
        return names[-1], None

    def bad(self, name: str, value: str, expected: str, default: object) -> None:
        """Warn once about ``name``, whose value is replaced by ``default``."""
        _log.warn_once(name, "%s=%r is not valid (%s); using the default %s", name, value, expected, default)

    def ignored(self, name: str, entry: str, expected: str) -> None:
        """Warn once about ``name``, one entry of whose list is left out."""
        _log.warn_once(name, "%s entry %r is not valid (%s); ignoring it", name, entry, expected)

    def choice(self, names: tuple[str, ...], choices: tuple[str, ...], default: str) -> str:
        name, value = self.first(*names)
        if value is None:
            return default
        if value.lower() in choices:
            return value.lower()
        self.bad(name, value, "expected one of " + ", ".join(choices), repr(default))
        return default

    def boolean(self, names: tuple[str, ...], default: bool) -> bool:
        name, value = self.first(*names)
        if value is None:
            return default
        if value.lower() in ("true", "1", "yes", "on"):
            return True
        if value.lower() in ("false", "0", "no", "off"):
            return False
        self.bad(name, value, "expected true or false", default)
        return default

    def number(
        self,
        names: tuple[str, ...],
        default: T,
        convert: Callable[[str], T],
        valid: Callable[[T], bool],
        expected: str,
    ) -> T:
        name, value = self.first(*names)
        if value is None:
            return default
        try:
            result = convert(value)
        except ValueError:
            result = None
        if result is None or not valid(result):
            self.bad(name, value, expected, default)
            return default
        return result

    def csv(self, name: str) -> list[str] | None:
        value = self.raw(name)
        if value is None:
            return None
        return [item.strip() for item in value.split(",") if item.strip()]


def _is_float(value: float) -> bool:
    return value == value and value not in (float("inf"), float("-inf"))


def load(environ: Mapping[str, str] | None = None) -> Settings:
    """Build the effective settings from ``environ`` (default ``os.environ``)."""
    env = _Env(os.environ if environ is None else environ)

    sdk_disabled = env.boolean(("OTEL_SDK_DISABLED",), False)
    log_level = env.raw("OTEL_LOG_LEVEL") or "info"
    if not _log.level_is_valid(log_level):
        env.bad("OTEL_LOG_LEVEL", log_level, "expected debug, info, warn, error", "'info'")
        log_level = "info"

    exporters = _exporters(env)
    protocol, endpoint, insecure = _endpoint(env)
    compression = env.choice(
        ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "OTEL_EXPORTER_OTLP_COMPRESSION"),
        COMPRESSIONS,
        "none",
    )
    timeout_ms = env.number(
        ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT"),
        10000.0,
        float,
        lambda v: _is_float(v) and v > 0,
        "expected a positive number of milliseconds",
    )

    sampler = env.choice(("OTEL_TRACES_SAMPLER",), SAMPLERS, "parentbased_always_on")
    sampler_arg = 1.0
    if sampler.endswith("traceidratio"):
        sampler_arg = env.number(
            ("OTEL_TRACES_SAMPLER_ARG",),
            1.0,
            float,
            lambda v: 0.0 <= v <= 1.0,
            "expected a number from 0 to 1",
        )

    positive = lambda v: v > 0  # noqa: E731
    queue = env.number(("OTEL_BSP_MAX_QUEUE_SIZE",), 2048, int, positive, "expected a positive integer")
    batch = env.number(
        ("OTEL_BSP_MAX_EXPORT_BATCH_SIZE",), 512, int, positive, "expected a positive integer"
    )
    if batch > queue and env.raw("OTEL_BSP_MAX_EXPORT_BATCH_SIZE") is None:
        batch = queue  # only the queue was set, below the default batch size: follow it
    elif batch > queue:
        env.bad(
            "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
            str(batch),
            f"must not exceed OTEL_BSP_MAX_QUEUE_SIZE={queue}",
            queue,
        )
        batch = queue

    return Settings(
        sdk_disabled=sdk_disabled,
        service_name=env.raw("OTEL_SERVICE_NAME"),
        resource_attributes=_resource_attributes(env),
        exporters=exporters,
        protocol=protocol,
        endpoint=endpoint,
        headers=_headers(env),
        timeout_s=timeout_ms / 1000.0,
        compression=compression,
        insecure=insecure,
        sampler=sampler,
        sampler_arg=sampler_arg,
        propagators=_propagators(env),
        bsp_schedule_delay_ms=env.number(
            ("OTEL_BSP_SCHEDULE_DELAY",), 5000, int, lambda v: v >= 0, "expected milliseconds"
        ),
        bsp_max_queue_size=queue,
        bsp_max_export_batch_size=batch,
        bsp_export_timeout_ms=env.number(
            ("OTEL_BSP_EXPORT_TIMEOUT",), 30000, int, positive, "expected milliseconds"
        ),
        disabled_hooks=frozenset(env.csv("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS") or ()),
        log_level=log_level.lower(),
        shutdown_timeout_s=env.number(
            ("AUTOTRACE_SHUTDOWN_TIMEOUT",),
            5000.0,
            float,
            lambda v: _is_float(v) and v >= 0,
            "expected milliseconds",
        )
        / 1000.0,
        deny=deny_list(env.environ),
        extra_hooks=_extra_hooks(env),
    )


def deny_list(environ: Mapping[str, str]) -> tuple[str, ...]:
    """Programs not to trace: ``AUTOTRACE_DENY`` (empty: none), else the default list."""
    value = environ.get("AUTOTRACE_DENY")
    if value is None:
        return DEFAULT_DENY
    return tuple(item.strip() for item in value.split(",") if item.strip())


def _exporters(env: _Env) -> tuple[str, ...]:
    names = env.csv("OTEL_TRACES_EXPORTER")
    if names is None:
        return ("otlp",)
    lowered = [name.lower() for name in names]
    chosen = tuple(dict.fromkeys(n for n in lowered if n in EXPORTERS and n != "none"))
    valid = chosen or "none" in lowered
    for name in names:
        if name.lower() not in EXPORTERS:
            if valid:
                env.ignored("OTEL_TRACES_EXPORTER", name, "expected otlp, console, console-json or none")
            else:
                env.bad("OTEL_TRACES_EXPORTER", name, "expected otlp, console, console-json or none", "'otlp'")
    return chosen if valid else ("otlp",)


def _endpoint(env: _Env) -> tuple[str, str, bool]:
    """Protocol, traces endpoint URL and whether a gRPC channel is insecure."""
    protocol_name, protocol_value = env.first(
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"
    )
    specific = env.raw("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")
    name, value = (
        ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", specific)
        if specific
        else ("OTEL_EXPORTER_OTLP_ENDPOINT", env.raw("OTEL_EXPORTER_OTLP_ENDPOINT"))
    )
    url = None
    if value is not None:
        from urllib.parse import urlsplit

        try:
            parts = urlsplit(value)
            port_ok = parts.port is None or parts.port > 0
        except ValueError:
            parts, port_ok = None, False
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or not port_ok:
            env.bad(name, redact_url(value), "expected a URL such as http://collector:4318", "endpoint")
        else:
            url = parts

    if protocol_value is None:
        # Unset protocol but an endpoint on the OTLP/gRPC port: the user means gRPC.
        protocol = "grpc" if url is not None and url.port == 4317 else DEFAULT_PROTOCOL
    else:
        protocol = env.choice((protocol_name,), PROTOCOLS, DEFAULT_PROTOCOL)

    if url is None:
        endpoint = DEFAULT_GRPC_ENDPOINT if protocol == "grpc" else DEFAULT_HTTP_ENDPOINT
        if protocol != "grpc":
            endpoint += HTTP_TRACES_PATH
    elif protocol == "grpc" or name == "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT":
        endpoint = url.geturl()
    else:
        endpoint = url.geturl().rstrip("/") + HTTP_TRACES_PATH

    scheme = endpoint.split(":", 1)[0]
    insecure = env.boolean(
        ("OTEL_EXPORTER_OTLP_TRACES_INSECURE", "OTEL_EXPORTER_OTLP_INSECURE"), scheme == "http"
    )
    return protocol, endpoint, insecure


def _pairs(env: _Env, name: str, secret: bool = False) -> dict[str, str]:
    """Parse a ``key=value,key=value`` variable (values URL-decoded).

    ``secret``: an entry without "=" is not echoed at all; it may be all secret
    ("Authorization: Bearer ..." written with a colon).
    """
    items = env.csv(name) or []
    result: dict[str, str] = {}
    if items:
        from urllib.parse import unquote
    for item in items:
        key, sep, value = item.partition("=")
        key = unquote(key.strip())
        if not sep or not key:
            # Never echo a value that may hold a secret: name the key part only.
            shown = key + "=<redacted>" if sep else ("<redacted>" if secret else key)
            env.ignored(name, shown, "expected key=value pairs")
            continue
        result[key] = unquote(value.strip())
    return result


def _headers(env: _Env) -> dict[str, str]:
    headers = _pairs(env, "OTEL_EXPORTER_OTLP_HEADERS", secret=True)
    headers.update(_pairs(env, "OTEL_EXPORTER_OTLP_TRACES_HEADERS", secret=True))
    return {k.lower(): v for k, v in headers.items()}


def _resource_attributes(env: _Env) -> dict[str, str]:
    return _pairs(env, "OTEL_RESOURCE_ATTRIBUTES")


def _propagators(env: _Env) -> tuple[str, ...]:
    """Valid propagator names; others are dropped with a warning, none valid -> default.

    Names beyond the built-in ones must be installed (an ``opentelemetry_propagator``
    entry point): the API would otherwise fail the app's import of
    ``opentelemetry.propagate``.
    """
    names = env.csv("OTEL_PROPAGATORS")
    if names is None:
        return DEFAULT_PROPAGATORS
    chosen: list[str] = []
    for name in names:
        lowered = name.lower()
        if lowered == "none":
            return ()
        if lowered not in PROPAGATORS and not _propagator_installed(name):
            env.ignored("OTEL_PROPAGATORS", name, "expected " + ", ".join(PROPAGATORS) + ", none or an installed propagator")
        else:
            chosen_name = lowered if lowered in PROPAGATORS else name
            if chosen_name not in chosen:
                chosen.append(chosen_name)
    return tuple(chosen) or DEFAULT_PROPAGATORS


def _propagator_installed(name: str) -> bool:
    try:
        from importlib.metadata import entry_points

        return any(True for _ in entry_points(group="opentelemetry_propagator", name=name))
    except Exception:  # noqa: BLE001
        return False


def _extra_hooks(env: _Env) -> tuple[tuple[str, str], ...]:
    """``AUTOTRACE_EXTRA_HOOKS=target.module=your.hook_module,...``: hooks of your own."""
    result = []
    for target, hook in _pairs(env, "AUTOTRACE_EXTRA_HOOKS").items():
        if not hook:
            env.ignored("AUTOTRACE_EXTRA_HOOKS", target + "=", "expected module=hook_module")
            continue
        result.append((target, hook))
    return tuple(result)


# -- settings read by hooks at the first request (interface; see settings branch)

import _thread  # noqa: E402

INCOMING_CONTEXT_MODES = ("continue", "restart", "ignore")
INCOMING_CONTEXT_ENV = "AUTOTRACE_INCOMING_CONTEXT"
LOG_CORRELATION_ENV = "OTEL_PYTHON_LOG_CORRELATION"


class HttpSettings:
    """Per-process settings of HTTP spans (server and client) and of incoming context."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        import re

        env = _Env(environ)
        self.excluded: list[re.Pattern] = []
        for pattern in env.csv("OTEL_PYTHON_EXCLUDED_URLS") or ():
            try:
                self.excluded.append(re.compile(pattern))
            except re.error as exc:
                _log.warn_once(
                    "OTEL_PYTHON_EXCLUDED_URLS:" + pattern,
                    "OTEL_PYTHON_EXCLUDED_URLS entry %r is not a valid regular expression (%s); ignoring it",
                    pattern,
                    exc,
                )
        prefix = "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_"
        self.request_headers = [h.lower() for h in env.csv(prefix + "SERVER_REQUEST") or ()]
        self.response_headers = [h.lower() for h in env.csv(prefix + "SERVER_RESPONSE") or ()]
        self.client_request_headers = [h.lower() for h in env.csv(prefix + "CLIENT_REQUEST") or ()]
        self.client_response_headers = [h.lower() for h in env.csv(prefix + "CLIENT_RESPONSE") or ()]
        # Header names whose captured values are replaced (regular expressions, any case).
        sanitize = []
        for field in env.csv(prefix + "SANITIZE_FIELDS") or ():
            try:
                re.compile(field)
                sanitize.append(f"(?:{field})")
            except re.error:
                sanitize.append(re.escape(field))
        self.sanitize: re.Pattern | None = re.compile("|".join(sanitize), re.IGNORECASE) if sanitize else None
        # A wrong value warns once and gives "continue".
        self.incoming_context: str = env.choice((INCOMING_CONTEXT_ENV,), INCOMING_CONTEXT_MODES, "continue")


_http_settings: HttpSettings | None = None
_http_settings_lock = _thread.allocate_lock()  # _thread: built in, unlike threading (start-up)


def http_settings() -> HttpSettings:
    """The HTTP settings, read from the environment once per process (at the first request)."""
    global _http_settings
    settings = _http_settings
    if settings is None:
        with _http_settings_lock:
            if _http_settings is None:
                _http_settings = HttpSettings(os.environ)
            settings = _http_settings
    return settings


def reset_http_settings() -> None:
    """Read the environment again at the next use (for tests)."""
    global _http_settings
    _http_settings = None


def propagator_names() -> tuple[str, ...]:
    """The propagators ``OTEL_PROPAGATORS`` names (valid ones; the default when none is)."""
    return _propagators(_Env(os.environ))


def log_correlation() -> bool:
    """``OTEL_PYTHON_LOG_CORRELATION``: ids in logging's default format (default false)."""
    return _Env(os.environ).boolean((LOG_CORRELATION_ENV,), False)
