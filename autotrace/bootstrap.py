"""Process start-up: configure the SDK, arm the hooks, flush at exit. Run by ``sitecustomize``.

:func:`start` runs once per process (a forked child inherits the parent's set-up and
does not run it again) and never raises: any failure logs one line naming the cause,
and the app runs untraced.
"""

from __future__ import annotations

import os
import sys
import threading

from . import _log

logger = _log.logger

_started = False
_start_lock = threading.Lock()

# Set for child processes: the parent's service name, used when the child's own command
# line says nothing (multiprocessing spawn children, ``python -c``). A process started
# without it is the main process of its tree (see :func:`startup_line`).
PARENT_SERVICE_ENV = "AUTOTRACE_PARENT_SERVICE_NAME"


def start() -> None:
    global _started
    with _start_lock:
        if _started:
            return
        _started = True
    try:
        _start()
    except Exception as exc:  # noqa: BLE001 - fail open
        logger.warning("not tracing this process: %s: %s", type(exc).__name__, exc)


def _start() -> None:
    from . import config, entrypoint

    settings = config.read()
    # The level first, so that OTEL_LOG_LEVEL=error also silences configuration warnings.
    _log.setup(settings.log_level)
    main = PARENT_SERVICE_ENV not in os.environ  # the first traced process of its tree
    _log.set_main_process(main)
    entry = entrypoint.current()
    if entry.program in settings.deny:
        logger.debug("not tracing %s: on the deny list (AUTOTRACE_DENY)", entry.program)
        return
    config.log_warnings_in_tree(settings.warnings)
    if settings.sdk_disabled:
        logger.debug("not tracing: OTEL_SDK_DISABLED=true")
        return

    service_name, source = _service_name(settings, entry, announce=not main)
    if main:
        logger.info("%s", startup_line(settings, service_name, source))
    _align_propagators(settings)

    from . import propagation, provider, registry

    # The SDK itself is set up at the first use of the tracing API (see autotrace.provider),
    # the agent's propagators at the import of opentelemetry.propagate.
    provider.arm(settings, entry, service_name)
    propagation.arm(settings.propagators)
    _install_flush(settings.shutdown_timeout_s)

    hooks = registry.HOOKS + tuple(registry.extra_hooks(settings.extra_hooks))
    unknown = settings.disabled_hooks - {hook.name for hook in hooks}
    if unknown:
        _log.warn_once(
            "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS",
            "OTEL_PYTHON_DISABLED_INSTRUMENTATIONS names unknown hooks %s (known: %s); ignored",
            ",".join(sorted(unknown)),
            ",".join(sorted(hook.name for hook in hooks)) or "none",
        )
    if not _log.debug_enabled():
        registry.arm(hooks, settings.disabled_hooks)
        _prepare_soon(entry)
        return
    # Under --debug: one report instead of a line per setting and per hook armed. The lines
    # of hooks applied meanwhile (to modules already imported) follow it.
    held: list = []
    registry.arm(hooks, settings.disabled_hooks, held)
    logger.debug("%s", startup_report(settings, entry, f"{service_name} (from {source})", hooks))
    for level, message, args in held:
        logger.log(level, message, *args)
    _prepare_soon(entry)


def _prepare_soon(entry) -> None:
    """Set the SDK up off the first request's path; not in multiprocessing's helper
    processes, which record nothing.

    An app server (gunicorn, uvicorn ...) sets it up now, before it imports the app and
    binds its port: a request may come the instant the port accepts, and gunicorn's
    workers, forked after this, inherit the set-up (with OTLP/gRPC too: the set-up makes
    no channel, see :class:`autotrace.exporters.ExporterHandle`). Any other program sets
    it up on a background thread once its start-up imports are done
    (:func:`autotrace.provider.prepare_soon`), or, if it binds a server's port before that
    (``http.server``), then (:func:`autotrace.provider.set_up_now`).
    """
    from . import entrypoint, provider

    if entry.source == entrypoint.HELPER_SOURCE:
        return
    if entry.program in entrypoint.APP_SERVERS:
        provider.set_up_now()
    provider.prepare_soon()  # nothing to do once set up


def _distribution_version(name: str) -> str:
    """A distribution's version from its metadata, without importing it (debug only)."""
    from .distributions import version

    return version(name) or "not installed"


def _without_the(text: str) -> str:
    return text[4:] if text.startswith("the ") else text


def startup_report(settings, entry, service_name: str, hooks) -> str:
    # service_name: the name and where it came from, e.g. "shop (from OTEL_SERVICE_NAME)"
    """The start-up report (--debug): versions, where spans go, sampling, hooks, settings."""
    from . import registry
    from ._version import __version__
    from .config import redact_url

    python = "%d.%d.%d" % sys.version_info[:3]
    head = (
        f"autotrace {__version__} (Python {python}, opentelemetry-sdk "
        f"{_distribution_version('opentelemetry-sdk')}) pid {os.getpid()} in {_without_the(entry.source)}"
    )
    exporters = []
    for name in settings.exporters:
        if name == "otlp":
            exporters.append(f"otlp {settings.protocol} -> {redact_url(settings.endpoint)}")
        elif name.startswith("console"):
            exporters.append(f"{name} -> stderr")
        else:
            exporters.append(name)
    sampler = settings.sampler
    if "ratio" in sampler:
        sampler += f" (ratio {settings.sampler_arg:g})"
    status = registry.status()
    armed = [h.name for h in hooks if not status.get(h.name, "").startswith("skipped")]
    disabled = sorted(h.name for h in hooks if h.name in settings.disabled_hooks)
    rows = [
        ("service.name", service_name),
        ("exporter", ", ".join(exporters) or "none (spans are not exported)"),
        ("sampler", f"{sampler}   propagators {','.join(settings.propagators) or 'none'}"),
        (
            "hooks armed",
            f"{', '.join(armed) or 'none'} ({len(armed)})" + (f"   disabled: {', '.join(disabled)}" if disabled else ""),
        ),
    ]
    shown = {
        "sdk_disabled", "service.name", "exporters", "protocol", "endpoint", "sampler", "sampler arg", "propagators",
        "disabled hooks",
    }
    rows += [(name, value) for name, value in settings.describe() if name not in shown and value]
    width = max(len(name) for name, _ in rows) + 2
    return "\n".join([head] + [f"  {name.ljust(width)}{value}" for name, value in rows])


def _derived_from(source: str) -> str:
    return f" (from the {_without_the(source)}; set OTEL_SERVICE_NAME to choose another)"


def startup_line(settings, service_name: str, source: str) -> str:
    """The main process's INFO line at start-up: the service name, where spans go, the sampler."""
    from .config import redact_url

    named = settings.service_name or settings.resource_attributes.get("service.name")
    line = f"service.name={service_name}" + ("" if named else _derived_from(source))
    where = []
    for name in settings.exporters:
        if name == "otlp":
            where.append(f"to {redact_url(settings.endpoint)} (OTLP {settings.protocol})")
        else:
            where.append(f"to stderr ({name})")
    sampler = settings.sampler
    if "ratio" in sampler:
        sampler += f" (ratio {settings.sampler_arg:g})"
    spans = "spans " + " and ".join(where) if where else "spans are not exported (OTEL_TRACES_EXPORTER=none)"
    return f"{line}, {spans}, sampler {sampler}"


def _service_name(settings, entry, announce: bool = True) -> tuple[str, str]:
    """The service name and where it came from: OTEL_SERVICE_NAME, else service.name in
    OTEL_RESOURCE_ATTRIBUTES, else the parent's (a child that cannot name itself), else
    derived from the command (see :mod:`autotrace.entrypoint`).

    ``announce``: log a derived name that differs from the parent's (the main process says
    it in its start-up line)."""
    parent = os.environ.get(PARENT_SERVICE_ENV)
    if settings.service_name:
        name, source = settings.service_name, "OTEL_SERVICE_NAME"
    elif settings.resource_attributes.get("service.name"):
        name, source = settings.resource_attributes["service.name"], "OTEL_RESOURCE_ATTRIBUTES"
    elif entry.weak and parent:
        name, source = parent, "the parent process"
    else:
        from .entrypoint import resolved_service_name

        name, source = resolved_service_name(entry)
        if announce and name != parent:  # a child named like its parent says nothing new
            logger.info("service.name=%s%s", name, _derived_from(source))
    # Children that cannot name themselves take this process's name.
    os.environ[PARENT_SERVICE_ENV] = name
    return name, source


def _align_propagators(settings) -> None:
    """Make ``OTEL_PROPAGATORS`` say what the agent validated.

    The API reads the variable itself when ``opentelemetry.propagate`` is imported and
    fails that import on a name it cannot load; the agent has already warned about such
    a name and dropped it, so the app's import must not fail on it. The agent's own B3
    and Jaeger formats are written by their entry point names (``autotrace_b3``: see
    :func:`autotrace.propagation.api_setting`), which the API always finds.
    """
    from .propagation import api_setting

    configured = os.environ.get("OTEL_PROPAGATORS")
    if configured is None:
        return
    effective = api_setting(settings.propagators)
    if [p.strip() for p in configured.split(",") if p.strip()] != effective.split(","):
        os.environ["OTEL_PROPAGATORS"] = effective


def _install_flush(timeout_s: float) -> None:
    import atexit

    from . import provider, signals

    atexit.register(provider.flush, timeout_s)
    signals.install(lambda final: provider.flush(timeout_s, final))
