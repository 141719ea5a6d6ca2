"""The configuration as :mod:`autotrace.config` reads it, the service name, the exporter's headers."""

from __future__ import annotations

from .check import FAIL, OK, WARN, Check, redact

# Setting -> (the run option that sets it, the variables read for it, first wins).
_SOURCES = (
    ("service.name", "service_name", ("OTEL_SERVICE_NAME",)),
    ("exporters", "exporter", ("OTEL_TRACES_EXPORTER",)),
    ("protocol", "protocol", ("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL", "OTEL_EXPORTER_OTLP_PROTOCOL")),
    ("endpoint", "endpoint", ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "OTEL_EXPORTER_OTLP_ENDPOINT")),
    ("headers", None, ("OTEL_EXPORTER_OTLP_TRACES_HEADERS", "OTEL_EXPORTER_OTLP_HEADERS")),
    ("timeout", None, ("OTEL_EXPORTER_OTLP_TRACES_TIMEOUT", "OTEL_EXPORTER_OTLP_TIMEOUT")),
    ("compression", None, ("OTEL_EXPORTER_OTLP_TRACES_COMPRESSION", "OTEL_EXPORTER_OTLP_COMPRESSION")),
    ("insecure", None, ("OTEL_EXPORTER_OTLP_TRACES_INSECURE", "OTEL_EXPORTER_OTLP_INSECURE")),
    ("sampler", None, ("OTEL_TRACES_SAMPLER",)),
    ("propagators", None, ("OTEL_PROPAGATORS",)),
    ("resource", None, ("OTEL_RESOURCE_ATTRIBUTES",)),
    ("sdk_disabled", None, ("OTEL_SDK_DISABLED",)),
    ("disabled hooks", None, ("OTEL_PYTHON_DISABLED_INSTRUMENTATIONS",)),
    ("log level", "debug", ("OTEL_LOG_LEVEL",)),
)


def source_of(setting: str, args, environ) -> str:
    """Where ``setting`` came from: ``flag``, ``variable NAME`` or ``default``.

    ``environ`` is the environment before the options were applied.
    """
    for name, option, variables in _SOURCES:
        if name != setting:
            continue
        if option and args is not None and getattr(args, option, None):
            return "flag --" + option.replace("_", "-")
        for variable in variables:
            if (environ.get(variable) or "").strip():
                return "variable " + variable
        return "default"
    return "default"


class Warnings(list):
    """The configuration's warnings as text; ``rejected``: variable -> its refused value."""

    def __init__(self) -> None:
        super().__init__()
        self.rejected: dict[str, str] = {}


_REJECTED = "%s=%r is not valid"


def load_settings(environ) -> tuple[object, Warnings]:
    """``config.load(environ)`` with its warnings captured instead of printed."""
    from .. import _log, config

    warnings = Warnings()
    original = _log.warn_once

    def capture(key: str, message: str, *args: object) -> None:
        warnings.append(message % args if args else message)
        if message.startswith(_REJECTED) and len(args) >= 2:
            warnings.rejected[str(args[0])] = str(args[1])

    _log.warn_once = capture
    try:
        settings = config.load(environ)
    finally:
        _log.warn_once = original
    return settings, warnings


def _set_by(source: str, variables: tuple[str, ...]) -> tuple[str, str] | None:
    """(the variable holding the value, how the user wrote it) for a flag or variable source.

    A flag reaches the configuration through the last variable of its setting (see
    ``cli.build_environment``), so a value refused there was the flag's.
    """
    if source.startswith("variable "):
        variable = source.split(" ", 1)[1]
        return variable, variable
    if source.startswith("flag "):
        return variables[-1], source.split(" ", 1)[1]
    return None


def configuration_checks(settings, warnings: list[str], args, environ) -> list[Check]:
    checks = []
    values = dict(settings.describe())  # already redacted: header names only
    rejected = getattr(warnings, "rejected", {})
    flags: dict[str, str] = {}  # variable -> the flag that set it
    for name, _option, variables in _SOURCES:
        value = values.get(name, "")
        source = source_of(name, args, environ)
        holder = _set_by(source, variables)
        if holder is not None and source.startswith("flag "):
            flags[holder[0]] = holder[1]
        if holder is not None and holder[0] in rejected:
            variable, written = holder
            refused = redact(rejected[variable])
            shown = f"{written}={refused!r}" if written == variable else f"{written} {refused!r}"
            checks.append(
                Check(
                    WARN,
                    "config " + name,
                    f"{value or '(none)'} (default ({shown} was rejected))",
                    f"correct or unset {variable}" if written == variable else f"correct {written}",
                )
            )
            continue
        if name == "protocol" and source == "default" and settings.protocol == "grpc":
            source = "derived from the endpoint's port 4317"
        if name == "service.name" and not settings.service_name:
            continue  # its own check below
        if source == "default" and name in ("headers", "resource", "disabled hooks") and not value:
            continue
        checks.append(Check(OK, "config " + name, f"{value or '(none)'} ({source})"))
    for text in warnings:
        variable = text.split("=", 1)[0].split(" ", 1)[0]
        fix = f"correct {flags[variable]}" if variable in flags else f"correct or unset {variable}"
        checks.append(Check(WARN, "config " + variable, text, fix + "; until then the default applies"))
    if settings.sdk_disabled:
        checks.append(
            Check(FAIL, "config sdk_disabled", "OTEL_SDK_DISABLED=true: the agent does nothing", "unset OTEL_SDK_DISABLED")
        )
    return checks


def service_name_check(settings, command: list[str], args=None) -> Check:
    if settings.service_name:
        origin = "--service-name" if getattr(args, "service_name", None) else "OTEL_SERVICE_NAME"
        return Check(OK, "service name", f"{settings.service_name} (from {origin})")
    attribute = settings.resource_attributes.get("service.name")
    if attribute:
        return Check(OK, "service name", f"{attribute} (from service.name in OTEL_RESOURCE_ATTRIBUTES)")
    if command:
        from .. import entrypoint

        entry = entrypoint.parse(list(command))
        status = WARN if entry.weak else OK
        return Check(
            status,
            "service name",
            f"{entry.service_name} (derived from the {entry.source})",
            "set OTEL_SERVICE_NAME (or --service-name) to choose the name" if entry.weak else "",
        )
    return Check(
        WARN,
        "service name",
        "no command given: the name will be derived from the app's command line",
        "set OTEL_SERVICE_NAME (or --service-name), or give the command: autotrace doctor -- python app.py",
    )


# What the exporters' transports accept: an HTTP header name is a token (RFC 9110), its
# value Latin-1 without control characters or leading blank (requests' rule); gRPC
# metadata as the agent's own gRPC hooks check it (:mod:`autotrace.rpc_span`; a ``-bin``
# key wants bytes, which a variable cannot give).
_HTTP_TOKEN = frozenset("!#$%&'*+-.^_`|~0123456789abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ")


def _header_problem(name: str, value: str, protocol: str) -> str:
    """Why ``name`` cannot be sent with ``protocol`` ("" when it can). Never quotes the value."""
    if protocol == "grpc":
        from ..rpc_span import is_metadata_key, is_metadata_value

        if not is_metadata_key(name):
            return "is not a valid gRPC metadata key (lower-case letters, digits, '-', '_' and '.')"
        if name.endswith("-bin"):
            return "is a binary (-bin) gRPC metadata key, which the exporter cannot send from a variable"
        if not is_metadata_value(value):
            return "has a value that is not printable ASCII, which gRPC metadata requires"
        return ""
    if not name or not set(name) <= _HTTP_TOKEN:
        return "is not a valid HTTP header name (letters, digits and !#$%&'*+-.^_`|~)"
    if value[:1] in (" ", "\t") or any(c in value for c in "\r\n\0"):
        return "has a value with a leading blank or a control character (CR, LF, NUL)"
    try:
        value.encode("latin-1")
    except UnicodeEncodeError:
        return "has a value with characters outside Latin-1, which HTTP headers cannot carry"
    return ""


def unsendable_headers(headers, protocol: str) -> dict[str, str]:
    """The headers the exporter cannot send, each with the reason."""
    found = {}
    for name, value in dict(headers).items():
        problem = _header_problem(str(name), str(value), protocol)
        if problem:
            found[str(name)] = problem
    return found


def headers_check(unsendable: dict[str, str], source: str) -> Check:
    where = source.split(" ", 1)[1] if source.startswith("variable ") else "OTEL_EXPORTER_OTLP_HEADERS"
    problems = "; ".join(f"header {name!r} {why}" for name, why in unsendable.items())
    return Check(
        FAIL,
        "headers",
        f"{where}: {problems}: every export would fail",
        f"correct {where}: key=value pairs, values URL-encoded ASCII (e.g. authorization=Bearer%20TOKEN)",
    )
