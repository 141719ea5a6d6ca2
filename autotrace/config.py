"""Configuration from the environment: standard ``OTEL_*`` variables first, ``AUTOTRACE_*``
only for what OpenTelemetry has no name for.

This module is the one reader of the agent's variables. :data:`VARIABLES` names every
setting and the variables it is read from. :func:`read` returns a :class:`Configuration`:
the values, where each one came from (:class:`Source`) and the warnings
(:class:`ConfigWarning`), as data; :func:`load` also logs each warning, once per process
(the agent at start-up). What is read later than start-up is read by the same functions:
the HTTP settings at the first request (:func:`http_settings`), the propagators when the
API is loaded (:func:`propagator_names`), the logging hook's settings
(:func:`log_correlation`, :func:`log_format`).

Every value is validated here, once. A wrong value gives one warning naming the variable
and the value, and the default is used instead; nothing in here raises.
"""

from __future__ import annotations

import _thread
import os

from . import _log

TYPE_CHECKING = False  # typing is not imported at start-up
if TYPE_CHECKING:
    from re import Pattern
    from typing import Callable, Mapping, Sequence, TypeVar

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
DEFAULT_PROPAGATORS = ("tracecontext", "baggage")
COMPRESSIONS = ("gzip", "none")
INCOMING_CONTEXT_MODES = ("continue", "restart", "ignore")

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

# Every setting and the variables it is read from, in the order the reports show them.
# Where two variables name the same thing, the first one set wins (the signal-specific
# name before the generic one).
VARIABLES: dict[str, tuple[str, ...]] = {
    "service.name": ("OTEL_SERVICE_NAME",),
    "exporters": ("OTEL_TRACES_EXPORTER",),
    "protocol": ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL"),
    "endpoint": ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT"),
    "headers": ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS"),
    "timeout": ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT"),
    "compression": ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "OTEL_EXPORTER_OTLP_COMPRESSION"),
    "insecure": ("OTEL_EXPORTER_OTLP_TRACES_INSECURE", "OTEL_EXPORTER_OTLP_INSECURE"),
    # The CA file and the credential provider are used by the SDK's exporter itself.
    "certificate": ("OTEL_EXPORTER_OTLP_TRACES_CERTIFICATE", "OTEL_EXPORTER_OTLP_CERTIFICATE"),
    "client key": ("OTEL_EXPORTER_OTLP_TRACES_CLIENT_KEY", "OTEL_EXPORTER_OTLP_CLIENT_KEY"),
    "client certificate": ("OTEL_EXPORTER_OTLP_TRACES_CLIENT_CERTIFICATE", "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE"),
    "credential provider": (
        "OTEL_PYTHON_EXPORTER_OTLP_HTTP_TRACES_CREDENTIAL_PROVIDER",
        "OTEL_PYTHON_EXPORTER_OTLP_HTTP_CREDENTIAL_PROVIDER",
    ),
    "sampler": ("OTEL_TRACES_SAMPLER",),
    "sampler arg": ("OTEL_TRACES_SAMPLER_ARG",),
    "propagators": ("OTEL_PROPAGATORS",),
    "resource": ("OTEL_RESOURCE_ATTRIBUTES",),
    "sdk_disabled": ("OTEL_SDK_DISABLED",),
    "disabled hooks": ("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS",),
    "log level": ("OTEL_LOG_LEVEL",),
    "batch": (
        "OTEL_BSP_SCHEDULE_DELAY",
        "OTEL_BSP_MAX_QUEUE_SIZE",
        "OTEL_BSP_MAX_EXPORT_BATCH_SIZE",
        "OTEL_BSP_EXPORT_TIMEOUT",
    ),
    "shutdown flush bound": ("AUTOTRACE_SHUTDOWN_TIMEOUT",),
    "deny": ("AUTOTRACE_DENY",),
    "extra hooks": ("AUTOTRACE_EXTRA_HOOKS",),
    "excluded urls": ("OTEL_PYTHON_EXCLUDED_URLS",),
    "captured headers": (
        "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_REQUEST",
        "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SERVER_RESPONSE",
        "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_REQUEST",
        "OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_CLIENT_RESPONSE",
    ),
    "sanitized headers": ("OTEL_INSTRUMENTATION_HTTP_CAPTURE_HEADERS_SANITIZE_FIELDS",),
    "incoming context": ("AUTOTRACE_INCOMING_CONTEXT",),
    "log correlation": ("OTEL_PYTHON_LOG_CORRELATION",),
    "log format": ("OTEL_PYTHON_LOG_FORMAT",),
    "db statement": ("AUTOTRACE_DB_STATEMENT",),
    "sql comment": ("AUTOTRACE_SQL_COMMENT",),
    "db root spans": ("AUTOTRACE_DB_ROOT_SPANS",),
    "messaging parent": ("AUTOTRACE_MESSAGING_PARENT",),
}

# Variables whose empty value is a value (an empty deny list traces everything); any
# other variable set to blanks counts as unset.
_EMPTY_IS_A_VALUE = frozenset({"AUTOTRACE_DENY"})


class Source:
    """Where a setting came from: ``kind`` is ``variable``, ``flag`` (an option of the
    launcher, which sets ``variable``), ``default`` or ``derived``."""

    __slots__ = ("kind", "option", "text", "variable")

    def __init__(self, kind: str, variable: str = "", option: str = "", text: str = "") -> None:
        self.kind, self.variable, self.option = kind, variable, option
        if not text:
            text = {"variable": "variable " + variable, "flag": "flag " + option}.get(kind, kind)
        self.text = text

    def __str__(self) -> str:
        return self.text

    def __repr__(self) -> str:
        return f"Source({self.text!r})"


def source_of(setting: str, environ: Mapping[str, str], flags: Mapping[str, str] | None = None) -> Source:
    """Where ``setting`` comes from in ``environ``: the first of its variables that is set.

    ``flags``: variable -> the launcher option that set it (an option beats every variable
    of its setting, as ``autotrace run`` applies it).
    """
    variables = VARIABLES[setting]
    for variable in variables:
        if flags and variable in flags:
            return Source("flag", variable, flags[variable])
    for variable in variables:
        value = environ.get(variable)
        if value is not None and (value.strip() or variable in _EMPTY_IS_A_VALUE):
            return Source("variable", variable)
    return Source("default")


class ConfigWarning:
    """A wrong setting: the variable, the line logged for it, and the value refused when
    the default replaced it (None when only an entry of a list was left out)."""

    __slots__ = ("key", "refused", "text", "variable")

    def __init__(self, variable: str, text: str, refused: str | None = None, key: str = "") -> None:
        self.variable, self.text, self.refused = variable, text, refused
        self.key = key or variable  # logged once per process per key

    def __repr__(self) -> str:
        return f"ConfigWarning({self.text!r})"


def log_warnings(warnings: Sequence[ConfigWarning]) -> None:
    """Log each warning, once per process (per variable, or per entry where it says so)."""
    for warning in warnings:
        _log.warn_once(warning.key, warning.text)


# Set for child processes: the configuration warnings an ancestor printed (checksums of
# their text), so that a worker started anew (not forked) does not print them again.
REPORTED_WARNINGS_ENV = "AUTOTRACE_REPORTED_WARNINGS"


def log_warnings_in_tree(warnings: Sequence[ConfigWarning]) -> None:
    """Log each warning once in a tree of processes: a forked worker inherits what its
    master printed; a child started anew (a spawned worker) skips the lines an ancestor
    printed, told by :data:`REPORTED_WARNINGS_ENV`."""
    if not warnings:
        return
    from zlib import crc32

    reported = set(os.environ.get(REPORTED_WARNINGS_ENV, "").split(","))
    sums = {id(warning): "%08x" % crc32(warning.text.encode("utf-8", "replace")) for warning in warnings}
    log_warnings([warning for warning in warnings if sums[id(warning)] not in reported])
    os.environ[REPORTED_WARNINGS_ENV] = ",".join(sorted((reported | set(sums.values())) - {""}))


ENABLED_FALSE = ("", "0", "false", "no", "off")  # the values of AUTOTRACE_ENABLED that start nothing


def warn_about_activation(environ: Mapping[str, str] | None = None) -> None:
    """AUTOTRACE_ENABLED is neither true nor false (``enabled``, ``ture``): one warning
    naming it (the agent does not start). Run by :mod:`autotrace._activate`."""
    environ = os.environ if environ is None else environ
    value = environ.get("AUTOTRACE_ENABLED", "")
    if value.strip().lower() in ENABLED_FALSE:
        return
    level = environ.get("OTEL_LOG_LEVEL") or "info"
    _log.setup(level if _log.level_is_valid(level) else "info")
    text = (
        f"AUTOTRACE_ENABLED={value!r} is not valid (expected true or false); ignoring it: "
        "the agent starts when it is 1, true, yes or on"
    )
    log_warnings_in_tree([ConfigWarning("AUTOTRACE_ENABLED", text, value)])


class HttpSettings:
    """Settings of HTTP spans, server and client: the URLs not traced, the headers captured
    (lower-case names) and how they are sanitized, and what is done with incoming context."""

    __slots__ = (
        "client_request_headers",
        "client_response_headers",
        "excluded",
        "incoming_context",
        "request_headers",
        "response_headers",
        "sanitize",
    )

    def __init__(
        self,
        excluded: list[Pattern[str]] | None = None,
        request_headers: list[str] | None = None,
        response_headers: list[str] | None = None,
        client_request_headers: list[str] | None = None,
        client_response_headers: list[str] | None = None,
        sanitize: Pattern[str] | None = None,
        incoming_context: str = "continue",
    ) -> None:
        self.excluded = excluded or []
        self.request_headers = request_headers or []
        self.response_headers = response_headers or []
        self.client_request_headers = client_request_headers or []
        self.client_response_headers = client_response_headers or []
        self.sanitize = sanitize  # header names whose captured values are replaced
        self.incoming_context = incoming_context

    def captured(self) -> str:
        """The captured header names, for the reports."""
        groups = (
            ("server request", self.request_headers),
            ("server response", self.response_headers),
            ("client request", self.client_request_headers),
            ("client response", self.client_response_headers),
        )
        return "; ".join(f"{where}: {_join(names)}" for where, names in groups if names)


DB_STATEMENT_MODES = ("sanitized", "raw", "off")
MESSAGING_PARENT_MODES = ("parent", "link")


class DbSettings:
    """Settings of database and cache spans (see :mod:`autotrace.db`).

    ``statement``: what ``db.query.text`` holds: ``sanitized`` (literals replaced by
    ``?``), ``raw`` (as the app wrote it) or ``off`` (not recorded). ``sql_comment``:
    append the span's context to SQL as a sqlcommenter comment. ``root_spans``: a query
    outside any trace starts one (off by default: a background job's queries would
    flood the backend).
    """

    __slots__ = ("statement", "sql_comment", "root_spans")

    def __init__(self, statement: str = "sanitized", sql_comment: bool = False, root_spans: bool = False) -> None:
        self.statement = statement
        self.sql_comment = sql_comment
        self.root_spans = root_spans

    def __repr__(self) -> str:
        return f"DbSettings(statement={self.statement!r}, sql_comment={self.sql_comment}, root_spans={self.root_spans})"


class Configuration:
    """The effective configuration (defaults as class attributes; :func:`read` sets the
    rest), with where each setting came from and the warnings reading it gave."""

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
    certificate: str | None = None
    client_key: str | None = None
    client_certificate: str | None = None
    credential_provider: str | None = None
    sampler: str = "parentbased_always_on"
    sampler_arg: float = 1.0
    propagators: tuple[str, ...] = DEFAULT_PROPAGATORS
    bsp_schedule_delay_ms: int = 5000
    bsp_max_queue_size: int = 2048
    bsp_max_export_batch_size: int = 512
    bsp_export_timeout_ms: int = 30000
    disabled_hooks: frozenset = frozenset()
    log_level: str = "info"
    shutdown_timeout_s: float = 5.0
    deny: tuple[str, ...] = DEFAULT_DENY
    extra_hooks: tuple[tuple[str, str], ...] = ()
    http: HttpSettings = HttpSettings()
    log_correlation: bool = False
    log_format: str | None = None
    db: DbSettings = DbSettings()
    messaging_parent: str = "parent"
    sources: Mapping[str, Source] = {}  # setting (a key of VARIABLES) -> where it came from
    warnings: Sequence[ConfigWarning] = ()

    def __init__(self, **values: object) -> None:
        for name, value in values.items():
            if not hasattr(Configuration, name):
                raise TypeError(f"unknown setting {name}")
            setattr(self, name, value)

    def describe(self) -> list[tuple[str, str]]:
        """The effective configuration as (setting, value) rows, in the order of
        :data:`VARIABLES`, secrets redacted."""
        http = self.http
        values = {
            "service.name": self.service_name or "(derived)",
            "exporters": _join(self.exporters) or "none",
            "protocol": self.protocol,
            "endpoint": redact_url(self.endpoint),
            "headers": _join(f"{k}=<redacted>" for k in self.headers),
            "timeout": f"{self.timeout_s:g}s",
            "compression": self.compression,
            "insecure": str(self.insecure),
            "certificate": self.certificate or "",
            "client key": self.client_key or "",
            "client certificate": self.client_certificate or "",
            "credential provider": self.credential_provider or "",
            "sampler": f"{self.sampler} (arg {self.sampler_arg:g})",
            "sampler arg": f"{self.sampler_arg:g}" if self.sampler.endswith("traceidratio") else "",
            "propagators": _join(self.propagators) or "none",
            "resource": _join(f"{k}={v}" for k, v in self.resource_attributes.items()),
            "sdk_disabled": str(self.sdk_disabled),
            "disabled hooks": _join(sorted(self.disabled_hooks)),
            "log level": self.log_level,
            "batch": (
                f"delay {self.bsp_schedule_delay_ms}ms, queue {self.bsp_max_queue_size}, "
                f"batch {self.bsp_max_export_batch_size}, export timeout {self.bsp_export_timeout_ms}ms"
            ),
            "shutdown flush bound": f"{self.shutdown_timeout_s:g}s",
            "deny": _join(self.deny),
            "extra hooks": _join(f"{m}={h}" for m, h in self.extra_hooks),
            "excluded urls": _join(p.pattern for p in http.excluded),
            "captured headers": http.captured(),
            "sanitized headers": http.sanitize.pattern if http.sanitize is not None else "",
            "incoming context": http.incoming_context,
            "log correlation": str(self.log_correlation),
            "log format": self.log_format or "",
            "db statement": self.db.statement,
            "sql comment": str(self.db.sql_comment),
            "db root spans": str(self.db.root_spans),
            "messaging parent": self.messaging_parent,
        }
        return [(name, values[name]) for name in VARIABLES]


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


class _Reader:
    """Reads and validates variables; a bad value yields the default and a warning (kept
    in :attr:`warnings`, logged by the caller)."""

    def __init__(self, environ: Mapping[str, str]) -> None:
        self.environ = environ
        self.warnings: list[ConfigWarning] = []

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

    def warn(self, variable: str, text: str, refused: str | None = None, key: str = "") -> None:
        self.warnings.append(ConfigWarning(variable, text, refused, key))

    def bad(self, name: str, value: str, expected: str, default: object) -> None:
        """Warn about ``name``, whose value is replaced by ``default``."""
        self.warn(name, f"{name}={value!r} is not valid ({expected}); using the default {default}", value)

    def ignored(self, name: str, entry: str, expected: str) -> None:
        """Warn about ``name``, one entry of whose list is left out."""
        self.warn(name, f"{name} entry {entry!r} is not valid ({expected}); ignoring it")

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


def load(environ: Mapping[str, str] | None = None) -> Configuration:
    """:func:`read`, and log each of its warnings once per process (the agent's start-up)."""
    configuration = read(environ)
    log_warnings(configuration.warnings)
    return configuration


def read(environ: Mapping[str, str] | None = None) -> Configuration:
    """The effective configuration from ``environ`` (default ``os.environ``); logs nothing."""
    environ = os.environ if environ is None else environ
    env = _Reader(environ)

    sdk_disabled = env.boolean(VARIABLES["sdk_disabled"], False)
    log_level = env.raw("OTEL_LOG_LEVEL") or "info"
    if not _log.level_is_valid(log_level):
        env.bad("OTEL_LOG_LEVEL", log_level, "expected debug, info, warn, error", "'info'")
        log_level = "info"

    exporters = _exporters(env)
    protocol, endpoint, insecure = _endpoint(env)
    compression = env.choice(VARIABLES["compression"], COMPRESSIONS, "none")
    timeout_ms = env.number(
        VARIABLES["timeout"],
        10000.0,
        float,
        lambda v: _is_float(v) and v > 0,
        "expected a positive number of milliseconds",
    )

    sampler = env.choice(VARIABLES["sampler"], SAMPLERS, "parentbased_always_on")
    sampler_arg = 1.0
    if sampler.endswith("traceidratio"):
        sampler_arg = env.number(
            VARIABLES["sampler arg"],
            1.0,
            float,
            lambda v: 0.0 <= v <= 1.0,
            "expected a number from 0 to 1",
        )

    delay_name, queue_name, batch_name, export_timeout_name = VARIABLES["batch"]
    positive = lambda v: v > 0  # noqa: E731
    queue = env.number((queue_name,), 2048, int, positive, "expected a positive integer")
    batch = env.number((batch_name,), 512, int, positive, "expected a positive integer")
    if batch > queue and env.raw(batch_name) is None:
        batch = queue  # only the queue was set, below the default batch size: follow it
    elif batch > queue:
        env.bad(batch_name, str(batch), f"must not exceed {queue_name}={queue}", queue)
        batch = queue

    values = dict(
        sdk_disabled=sdk_disabled,
        service_name=env.raw("OTEL_SERVICE_NAME"),
        resource_attributes=_pairs(env, "OTEL_RESOURCE_ATTRIBUTES"),
        exporters=exporters,
        protocol=protocol,
        endpoint=endpoint,
        headers=_headers(env),
        timeout_s=timeout_ms / 1000.0,
        compression=compression,
        insecure=insecure,
        certificate=env.first(*VARIABLES["certificate"])[1],
        client_key=env.first(*VARIABLES["client key"])[1],
        client_certificate=env.first(*VARIABLES["client certificate"])[1],
        credential_provider=env.first(*VARIABLES["credential provider"])[1],
        sampler=sampler,
        sampler_arg=sampler_arg,
        propagators=_propagators(env),
        bsp_schedule_delay_ms=env.number((delay_name,), 5000, int, lambda v: v >= 0, "expected milliseconds"),
        bsp_max_queue_size=queue,
        bsp_max_export_batch_size=batch,
        bsp_export_timeout_ms=env.number((export_timeout_name,), 30000, int, positive, "expected milliseconds"),
        disabled_hooks=frozenset(env.csv("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS") or ()),
        log_level=log_level.lower(),
        shutdown_timeout_s=env.number(
            VARIABLES["shutdown flush bound"],
            5000.0,
            float,
            lambda v: _is_float(v) and v >= 0,
            "expected milliseconds",
        )
        / 1000.0,
        deny=deny_list(environ),
        extra_hooks=_extra_hooks(env),
        http=_http(env),
        log_correlation=_log_correlation(env),
        log_format=env.raw("OTEL_PYTHON_LOG_FORMAT"),
        db=_db(env),
        messaging_parent=_messaging_parent(env),
    )
    sources = {setting: source_of(setting, environ) for setting in VARIABLES}
    if protocol == "grpc" and sources["protocol"].kind == "default":
        sources["protocol"] = Source("derived", text="derived from the endpoint's port 4317")
    return Configuration(**values, sources=sources, warnings=env.warnings)


def deny_list(environ: Mapping[str, str]) -> tuple[str, ...]:
    """Programs not to trace: ``AUTOTRACE_DENY`` (empty: none), else the default list."""
    value = environ.get("AUTOTRACE_DENY")
    if value is None:
        return DEFAULT_DENY
    return tuple(item.strip() for item in value.split(",") if item.strip())


def _exporters(env: _Reader) -> tuple[str, ...]:
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


def _endpoint(env: _Reader) -> tuple[str, str, bool]:
    """Protocol, traces endpoint URL and whether a gRPC channel is insecure."""
    protocol_name, protocol_value = env.first(*VARIABLES["protocol"])
    specific_name, generic_name = VARIABLES["endpoint"]
    specific = env.raw(specific_name)
    name, value = (specific_name, specific) if specific else (generic_name, env.raw(generic_name))
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
    elif protocol == "grpc" or name == specific_name:
        endpoint = url.geturl()
    else:
        endpoint = url.geturl().rstrip("/") + HTTP_TRACES_PATH

    scheme = endpoint.split(":", 1)[0]
    insecure = env.boolean(VARIABLES["insecure"], scheme == "http")
    return protocol, endpoint, insecure


def _pairs(env: _Reader, name: str, secret: bool = False) -> dict[str, str]:
    """Parse a ``key=value,key=value`` variable (values URL-decoded).

    ``secret``: an entry without "=" is not echoed at all; it may be all secret
    ("Authorization: Bearer ..." written with a colon).

    Not ``opentelemetry.util.re.parse_env_headers``: importing it costs start-up time
    (logging, re, typing_extensions: about 15 ms), it logs a malformed entry whole
    through ``logging`` (a secret included) without telling the caller, it drops a value
    with a blank that is not URL-encoded, and it lower-cases every key, which is wrong for
    resource attributes and module names.
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


def _headers(env: _Reader) -> dict[str, str]:
    specific, generic = VARIABLES["headers"]
    headers = _pairs(env, generic, secret=True)
    headers.update(_pairs(env, specific, secret=True))
    return {k.lower(): v for k, v in headers.items()}


def _propagators(env: _Reader) -> tuple[str, ...]:
    """Valid propagator names; others are dropped with a warning, none valid -> default.

    Names beyond the built-in ones must be installed (an ``opentelemetry_propagator``
    entry point): the API would otherwise fail the app's import of
    ``opentelemetry.propagate``.
    """
    from .propagation import built_in_name

    names = env.csv("OTEL_PROPAGATORS")
    if names is None:
        return DEFAULT_PROPAGATORS
    from .propagation import BUILT_IN  # light: the formats are imported when built

    chosen: list[str] = []
    for name in names:
        lowered = built_in_name(name) or name.lower()  # autotrace_b3 (the agent's entry point) is b3
        if lowered == "none":
            return ()
        if lowered not in BUILT_IN and not _propagator_installed(name):
            env.ignored("OTEL_PROPAGATORS", name, "expected " + ", ".join(BUILT_IN) + ", none or an installed propagator")
        else:
            chosen_name = lowered if lowered in BUILT_IN else name
            if chosen_name not in chosen:
                chosen.append(chosen_name)
    return tuple(chosen) or DEFAULT_PROPAGATORS


def _propagator_installed(name: str) -> bool:
    from .distributions import entry_points

    return bool(entry_points("opentelemetry_propagator", name))


def _extra_hooks(env: _Reader) -> tuple[tuple[str, str], ...]:
    """``AUTOTRACE_EXTRA_HOOKS=target.module=your.hook_module,...``: hooks of your own."""
    result = []
    for target, hook in _pairs(env, "AUTOTRACE_EXTRA_HOOKS").items():
        if not hook:
            env.ignored("AUTOTRACE_EXTRA_HOOKS", target + "=", "expected module=hook_module")
            continue
        result.append((target, hook))
    return tuple(result)


def _http(env: _Reader) -> HttpSettings:
    (excluded_name,) = VARIABLES["excluded urls"]
    server_request, server_response, client_request, client_response = VARIABLES["captured headers"]
    (sanitize_name,) = VARIABLES["sanitized headers"]
    patterns = env.csv(excluded_name) or []
    fields = env.csv(sanitize_name) or []
    excluded = []
    sanitize = None
    if patterns or fields:
        import re

        for pattern in patterns:
            try:
                excluded.append(re.compile(pattern))
            except re.error as exc:
                env.warn(
                    excluded_name,
                    f"{excluded_name} entry {pattern!r} is not a valid regular expression ({exc}); ignoring it",
                    key=f"{excluded_name}:{pattern}",
                )
        # Header names whose captured values are replaced (regular expressions, any case).
        alternatives = []
        for field in fields:
            try:
                re.compile(field)
                alternatives.append(f"(?:{field})")
            except re.error:
                alternatives.append(re.escape(field))
        sanitize = re.compile("|".join(alternatives), re.IGNORECASE) if alternatives else None
    return HttpSettings(
        excluded=excluded,
        request_headers=[h.lower() for h in env.csv(server_request) or ()],
        response_headers=[h.lower() for h in env.csv(server_response) or ()],
        client_request_headers=[h.lower() for h in env.csv(client_request) or ()],
        client_response_headers=[h.lower() for h in env.csv(client_response) or ()],
        sanitize=sanitize,
        incoming_context=env.choice(VARIABLES["incoming context"], INCOMING_CONTEXT_MODES, "continue"),
    )


def _log_correlation(env: _Reader) -> bool:
    return env.boolean(VARIABLES["log correlation"], False)


def _db(env: _Reader) -> DbSettings:
    return DbSettings(
        statement=env.choice(VARIABLES["db statement"], DB_STATEMENT_MODES, "sanitized"),
        sql_comment=env.boolean(VARIABLES["sql comment"], False),
        root_spans=env.boolean(VARIABLES["db root spans"], False),
    )


def _messaging_parent(env: _Reader) -> str:
    return env.choice(VARIABLES["messaging parent"], MESSAGING_PARENT_MODES, "parent")


# -- read after start-up -----------------------------------------------------------------
# Each reads the current environment with the functions read() uses, and logs what is
# wrong once per process (the start-up's load() may have logged it already).


def _read_now(part: Callable[[_Reader], T]) -> T:
    env = _Reader(os.environ)
    value = part(env)
    log_warnings(env.warnings)
    return value


_http_settings: HttpSettings | None = None
_http_settings_lock = _thread.allocate_lock()  # _thread: built in, unlike threading (start-up)


def http_settings() -> HttpSettings:
    """The HTTP settings, read once per process (at the first request)."""
    global _http_settings
    settings = _http_settings
    if settings is None:
        with _http_settings_lock:
            if _http_settings is None:
                _http_settings = _read_now(_http)
            settings = _http_settings
    return settings


def reset_http_settings() -> None:
    """Read the environment again at the next use of :func:`http_settings` (for tests)."""
    global _http_settings
    _http_settings = None


_db_settings: DbSettings | None = None


def db_settings() -> DbSettings:
    """The database settings, read once per process (at the first query)."""
    global _db_settings
    settings = _db_settings
    if settings is None:
        with _http_settings_lock:
            if _db_settings is None:
                _db_settings = _read_now(_db)
            settings = _db_settings
    return settings


# Called by reset_db_settings(): what was made from the old settings is dropped
# (autotrace.db's statements, whose text depends on AUTOTRACE_DB_STATEMENT).
_db_reset_callbacks: list[Callable[[], None]] = []


def on_db_settings_reset(callback: Callable[[], None]) -> None:
    """Call ``callback`` whenever :func:`reset_db_settings` runs."""
    _db_reset_callbacks.append(callback)


def reset_db_settings() -> None:
    """Read the environment again at the next use of :func:`db_settings` (for tests)."""
    global _db_settings
    _db_settings = None
    for callback in _db_reset_callbacks:
        callback()


_messaging_parent_mode: str | None = None


def messaging_parent() -> str:
    """``AUTOTRACE_MESSAGING_PARENT``: ``parent`` (a consumer span continues the producer's
    trace, the default) or ``link`` (a new trace linked to it); read once per process."""
    global _messaging_parent_mode
    mode = _messaging_parent_mode
    if mode is None:
        mode = _messaging_parent_mode = _read_now(_messaging_parent)
    return mode


def reset_messaging_settings() -> None:
    """Read ``AUTOTRACE_MESSAGING_PARENT`` again at its next use (for tests)."""
    global _messaging_parent_mode
    _messaging_parent_mode = None


def propagator_names() -> tuple[str, ...]:
    """The validated ``OTEL_PROPAGATORS`` names (``()`` for none)."""
    return _read_now(_propagators)


def log_correlation() -> bool:
    """``OTEL_PYTHON_LOG_CORRELATION`` (default false)."""
    return _read_now(_log_correlation)


def log_format() -> str | None:
    """``OTEL_PYTHON_LOG_FORMAT`` as given (None when unset); the logging hook validates it
    as a %-style format, which needs the logging module."""
    return _Reader(os.environ).raw("OTEL_PYTHON_LOG_FORMAT")
