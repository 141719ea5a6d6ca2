"""The configuration as :mod:`autotrace.config` reads it, the service name, the exporter's headers.

Values, sources and warnings are the configuration's own data (:func:`config.read
<autotrace.config.read>`); the doctor adds which launcher option set a variable.
"""

from __future__ import annotations

from .. import config, launcher
from .check import FAIL, OK, WARN, Check, redact

# Shown even at their default (any other setting only when it is set): where spans go.
ALWAYS_SHOWN = frozenset(
    {
        "service.name",
        "exporters",
        "protocol",
        "endpoint",
        "headers",
        "timeout",
        "compression",
        "insecure",
        "sampler",
        "propagators",
        "resource",
        "sdk_disabled",
        "disabled hooks",
        "log level",
    }
)


def load_settings(environ) -> tuple[config.Configuration, list[config.ConfigWarning]]:
    """The configuration ``environ`` gives, and its warnings (not logged)."""
    settings = config.read(environ)
    return settings, list(settings.warnings)


def source_of(setting: str, args, environ) -> str:
    """Where ``setting`` came from: ``flag --OPTION`` (of ``args``), ``variable NAME`` (of
    ``environ``, the environment before the options were applied) or ``default``."""
    return config.source_of(setting, environ, launcher.flags(args)).text


def configuration_checks(settings, warnings: list[config.ConfigWarning], args, environ) -> list[Check]:
    """One check per setting (see :data:`ALWAYS_SHOWN`) with its value and where it came
    from, one per warning. ``environ``: the environment before the options were applied."""
    checks = []
    values = dict(settings.describe())  # already redacted: header names only
    flags = launcher.flags(args)  # variable -> the option that set it
    refused = {w.variable: w.refused for w in warnings if w.refused is not None}  # replaced by the default
    for name in config.VARIABLES:
        value = values[name]
        source = config.source_of(name, environ, flags)
        if source.kind == "default":
            source = settings.sources.get(name, source)  # derived, or the default
        if source.variable in refused:  # the value given where it came from was refused
            variable, written = source.variable, source.option or source.variable
            shown = redact(refused[variable])
            shown = f"{written}={shown!r}" if source.kind == "variable" else f"{written} {shown!r}"
            checks.append(
                Check(
                    WARN,
                    "config " + name,
                    f"{value or '(none)'} (default ({shown} was rejected))",
                    f"correct or unset {variable}" if source.kind == "variable" else f"correct {written}",
                )
            )
            continue
        if name == "service.name" and not settings.service_name:
            continue  # its own check below
        if source.kind == "default" and (not value or name not in ALWAYS_SHOWN):
            continue
        checks.append(Check(OK, "config " + name, f"{value or '(none)'} ({source})"))
    for warning in warnings:
        variable = warning.variable
        fix = f"correct {flags[variable]}" if variable in flags else f"correct or unset {variable}"
        checks.append(Check(WARN, "config " + variable, warning.text, fix + "; until then the default applies"))
    if settings.sdk_disabled:
        checks.append(
            Check(FAIL, "config sdk_disabled", "OTEL_SDK_DISABLED=true: the agent does nothing", "unset OTEL_SDK_DISABLED")
        )
    return checks


def service_name_check(settings, command: list[str], args=None) -> Check:
    if settings.service_name:
        origin = launcher.flags(args).get("OTEL_SERVICE_NAME", "OTEL_SERVICE_NAME")
        return Check(OK, "service name", f"{settings.service_name} (from {origin})")
    attribute = settings.resource_attributes.get("service.name")
    if attribute:
        return Check(OK, "service name", f"{attribute} (from service.name in OTEL_RESOURCE_ATTRIBUTES)")
    if command:
        import os

        from .. import entrypoint

        try:
            cwd = os.getcwd()
        except OSError:
            cwd = ""
        entry = entrypoint.parse(list(command), cwd, os.environ)
        name, source = entrypoint.resolved_service_name(entry)
        generic = entry.weak or entrypoint.is_generic(name)
        return Check(
            WARN if generic else OK,
            "service name",
            f"{name} (derived from the {source})" + (": a generic name, shared by unrelated services" if generic else ""),
            "set OTEL_SERVICE_NAME (or --service-name) to choose the name" if generic else "",
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
