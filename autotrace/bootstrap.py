"""Process start-up: configure the SDK, arm the hooks, flush at exit. Run by ``sitecustomize``.

:func:`start` runs once per process (a forked child inherits the parent's set-up and
does not run it again) and never raises: any failure logs one line naming the cause,
and the app runs untraced.
"""

from __future__ import annotations

import os
import threading

from . import _log

logger = _log.logger

_started = False
_start_lock = threading.Lock()

# Set for child processes: the parent's service name, used when the child's own command
# line says nothing (multiprocessing spawn children, ``python -c``).
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

    # The level first, so that OTEL_LOG_LEVEL=error also silences configuration warnings.
    _log.setup(os.environ.get("OTEL_LOG_LEVEL"))
    entry = entrypoint.current()
    if entry.program in config.deny_list(os.environ):
        logger.debug("not tracing %s: on the deny list (AUTOTRACE_DENY)", entry.program)
        return
    settings = config.load()
    _log.setup(settings.log_level)
    if settings.sdk_disabled:
        logger.debug("not tracing: OTEL_SDK_DISABLED=true")
        return

    service_name = _service_name(settings, entry)
    _align_propagators(settings)
    if _log.debug_enabled():
        for name, value in settings.describe():
            logger.debug("config %s: %s", name, value)

    from . import provider, registry

    # The SDK itself is set up at the first use of the tracing API (see autotrace.provider).
    provider.arm(settings, entry, service_name)
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
    registry.arm(hooks, settings.disabled_hooks)


def _service_name(settings, entry) -> str:
    """OTEL_SERVICE_NAME, else service.name in OTEL_RESOURCE_ATTRIBUTES, else derived."""
    name = settings.service_name or settings.resource_attributes.get("service.name")
    if not name:
        parent = os.environ.get(PARENT_SERVICE_ENV)
        if entry.weak and parent:
            name = parent
        else:
            name = entry.service_name
            logger.info(
                "service.name=%s (from the %s; set OTEL_SERVICE_NAME to choose another)",
                name,
                entry.source,
            )
    # Children that cannot name themselves take this process's name.
    os.environ[PARENT_SERVICE_ENV] = name
    return name


def _align_propagators(settings) -> None:
    """Make ``OTEL_PROPAGATORS`` say what the agent validated.

    The API reads the variable itself when ``opentelemetry.propagate`` is imported and
    fails that import on a name it cannot load; the agent has already warned about such
    a name and dropped it, so the app's import must not fail on it.
    """
    configured = os.environ.get("OTEL_PROPAGATORS")
    if configured is None:
        return
    effective = ",".join(settings.propagators) or "none"
    if [p.strip() for p in configured.split(",") if p.strip()] != effective.split(","):
        os.environ["OTEL_PROPAGATORS"] = effective


def _install_flush(timeout_s: float) -> None:
    import atexit

    from . import provider, signals

    atexit.register(provider.flush, timeout_s)
    signals.install(lambda final: provider.flush(timeout_s, final))
