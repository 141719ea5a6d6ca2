"""When the SDK is set up: at the first use of the tracing API, not at start-up.

Importing the OpenTelemetry SDK costs tens of milliseconds; a process that never
records a span should not pay it. So the bootstrap only waits for
``opentelemetry.trace`` to be imported (by the app, or by a hook at its first request),
and then wraps two API functions:

- ``get_tracer_provider()`` (which ``get_tracer()`` calls): the first call that would
  return the API's proxy provider sets up the agent's SDK provider first and returns
  it. Every caller of the API therefore sees the agent's provider, as if it had been
  set at start-up.
- ``set_tracer_provider()``: an app that sets its own provider is respected, whether
  it does so before the agent's is set up (the agent then never sets one up) or after
  (see :func:`autotrace.sdk.hand_over`).

Module state here is light: the SDK is imported only inside :func:`_set_up`.
"""

from __future__ import annotations

import threading
from types import ModuleType

from . import _log

logger = _log.logger

_lock = threading.RLock()
_state = "waiting"  # waiting -> set up | failed | declined
_setup_args: tuple = ()


def arm(settings, entry, service_name: str) -> None:
    """Remember what the SDK needs, and wait for the tracing API to be imported."""
    global _setup_args
    from . import importer

    _setup_args = (settings, entry, service_name)
    importer.register("opentelemetry.trace", _wrap_api)


def is_set_up() -> bool:
    return _state == "set up"


def state() -> str:
    """``waiting`` (for the API), ``set up``, ``failed`` or ``declined`` (the app's provider is used)."""
    return _state


def settings():
    """The configuration the agent armed with, or None when it did not (not traced)."""
    return _setup_args[0] if _setup_args else None


def service_name() -> str | None:
    """The service name the agent armed with, or None when it did not (not traced)."""
    return _setup_args[2] if len(_setup_args) > 2 else None


def _wrap_api(trace: ModuleType) -> None:
    original_get = trace.get_tracer_provider
    original_set = trace.set_tracer_provider
    proxy_type = trace.ProxyTracerProvider

    def get_tracer_provider():
        provider = original_get()
        if _state == "waiting" and isinstance(provider, proxy_type):
            _set_up(trace)
            provider = original_get()
        return provider

    def set_tracer_provider(tracer_provider):
        if _state == "set up":
            from . import sdk

            if sdk.hand_over(trace, tracer_provider):
                return None
        elif _state == "waiting":
            _decline("the app set its own TracerProvider (%s); autotrace uses it" % type(tracer_provider).__name__)
        return original_set(tracer_provider)

    for wrapper, original in ((get_tracer_provider, original_get), (set_tracer_provider, original_set)):
        wrapper.__name__ = original.__name__
        wrapper.__qualname__ = original.__qualname__
        wrapper.__doc__ = original.__doc__
        wrapper.__module__ = original.__module__
        wrapper.__wrapped__ = original  # type: ignore[attr-defined]
    trace.get_tracer_provider = get_tracer_provider
    trace.set_tracer_provider = set_tracer_provider

    # A provider set before the agent started (by the user's sitecustomize) is kept.
    current = original_get()
    if not isinstance(current, proxy_type):
        _decline("a TracerProvider was already set (%s); autotrace uses it" % type(current).__name__)


def _decline(reason: str) -> None:
    global _state
    with _lock:
        if _state == "waiting":
            _state = "declined"
            logger.info(reason)


def _set_up(trace: ModuleType) -> None:
    global _state
    with _lock:
        if _state != "waiting":
            return
        try:
            from . import sdk

            settings, entry, service_name = _setup_args
            set_global = trace.set_tracer_provider.__wrapped__
            sdk.install(set_global, settings, sdk.build_resource(settings, entry, service_name))
            _state = "set up"
        except Exception as exc:  # noqa: BLE001 - fail open: the API stays a no-op
            _state = "failed"
            logger.warning("not tracing: setting up the SDK failed: %s: %s", type(exc).__name__, exc)


def flush(timeout_s: float, final: bool = True) -> bool:
    """Flush what was recorded (nothing to do if the SDK was never set up)."""
    if _state == "set up":
        from . import sdk

        return sdk.flush(timeout_s, final)
    if _state == "declined":
        from . import sdk

        return sdk.flush_app_provider(timeout_s)
    return True
