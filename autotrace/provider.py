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

The SDK is also set up ahead of that first use, off the request path (it costs about
130 ms): :func:`prepare_soon` starts a background thread that waits until the app is done
importing what it imports at start-up, then loads the API and sets the SDK up, so the
first request finds everything ready. A request that comes earlier waits for that set-up
(the lock below) or does it itself, as before; nothing is lost either way. A forked child
(a gunicorn worker) starts its own thread if the SDK was not set up before the fork, and a
process that forked such children (a prefork master) leaves the set-up to them. An app
server (gunicorn, uvicorn ...) does not wait: the bootstrap sets the SDK up at its start,
before it binds its port (:func:`set_up_now`), and gunicorn's workers inherit it; a
script's server does the same when it binds (the ``http_server`` and ``uvicorn`` hooks).

Module state here is light: the SDK is imported only inside :func:`_set_up`.
"""

from __future__ import annotations

import os
import sys
import threading
from types import ModuleType

from . import _log, green

logger = _log.logger

_lock = threading.RLock()
_state = "waiting"  # waiting -> set up | failed | declined
_setup_args: tuple = ()

# Held by the background set-up while it runs; a fork waits for it (see _wrap_fork).
_prepare_lock = threading.Lock()
_prepare_thread: threading.Thread | None = None
_fork_handlers = False
# How the background set-up waits for the app's start-up to end: it looks at the thread
# that started the process every POLL_S, and starts once that thread was seen outside
# any import QUIET_POLLS times in a row (or after MAX_WAIT_S).
POLL_S = 0.05
QUIET_POLLS = 2
MAX_WAIT_S = 30.0
# At most this long a fork waits for a set-up in progress (then it goes on regardless).
FORK_WAIT_S = 5.0
# The modules whose import announces that gevent or eventlet is about to patch the process
# (see _before_patching), and whether one was imported.
PATCHERS = ("gevent.monkey", "eventlet.patcher")
_patching_announced = False


def arm(settings, entry, service_name: str) -> None:
    """Remember what the SDK needs, and wait for the tracing API to be imported."""
    global _setup_args
    from . import importer

    _setup_args = (settings, entry, service_name)
    importer.register("opentelemetry.trace", _wrap_api)


def set_up_now() -> None:
    """Set the SDK up at once, on this thread (a server's start-up, before its port
    accepts; a set-up in progress on the background thread is waited for); never raises.

    What the background set-up does once the app's start-up is over (:func:`prepare_soon`),
    done now: the API and the agent's propagators, then the provider, unless the app's is set.
    It holds the background set-up's lock, so a fork from another thread meanwhile waits
    for it while ``os.fork`` is wrapped (see :func:`_wrap_fork`), as it would for that set-up.
    """
    if _state != "waiting" or not _setup_args:
        return
    lock = _prepare_lock
    held = threading.current_thread() is not _prepare_thread and lock.acquire(timeout=FORK_WAIT_S)
    try:
        from . import api

        api.load()
        trace = sys.modules.get("opentelemetry.trace")
        if trace is not None:
            trace.get_tracer_provider()  # sets the SDK up (see _wrap_api)
    except Exception as exc:  # noqa: BLE001 - fail open: the first use sets it up instead
        logger.debug("the SDK was not set up at start-up: %s: %s", type(exc).__name__, exc)
    finally:
        if held:
            lock.release()


def prepare_soon() -> None:
    """Set the SDK up on a background thread once the app's start-up imports are done."""
    global _prepare_thread, _fork_handlers
    if _state != "waiting" or not _setup_args:
        return
    if not _fork_handlers:
        _fork_handlers = True
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_parent=_after_fork_in_parent, after_in_child=_after_fork_in_child)
        from . import importer

        for name in PATCHERS:
            importer.register(name, _before_patching)
    if _patching_announced:
        return  # the first span sets it up, after the patching (see _before_patching)
    _wrap_fork()
    _prepare_thread = green.SetUpThread(
        target=_prepare, args=(threading.get_ident(),), name="autotrace-setup", daemon=True
    )
    _prepare_thread.start()


def _prepare(starter: int) -> None:
    """The background set-up: wait while ``starter`` (the main thread) imports, then set up."""
    import time

    try:
        quiet = 0
        deadline = time.monotonic() + MAX_WAIT_S
        while quiet < QUIET_POLLS and time.monotonic() < deadline:
            time.sleep(POLL_S)
            if _state != "waiting":
                return
            importing = _importing(starter)
            if importing is None:  # the main thread has ended: the process is exiting
                return
            quiet = 0 if importing else quiet + 1
        with _prepare_lock:
            if _state != "waiting" or _forked_before_set_up or _patching_announced:
                # A prefork master (gunicorn) whose workers were forked before this: they
                # set up on their own; here the first span, if any, sets it up.
                return
            if green.patched():
                # gevent or eventlet patched the process meanwhile: imports from this real
                # thread would wait on green import locks. The first span sets it up.
                return
            from . import api

            api.load()  # the API (this wraps it, see _wrap_api) and the agent's propagators
            trace = sys.modules.get("opentelemetry.trace")
            if trace is not None:
                trace.get_tracer_provider()  # sets the SDK up, unless the app set its own
    except Exception as exc:  # noqa: BLE001 - fail open: the first use sets it up instead
        logger.debug("the SDK was not set up ahead of its first use: %s: %s", type(exc).__name__, exc)
    finally:
        _unwrap_fork()


def _before_patching(module: ModuleType) -> None:
    """The app imported ``gevent.monkey`` or ``eventlet.patcher``: it is about to patch.

    The patching replaces ``_thread.get_ident``, which the import system's module locks
    use: an import the background set-up has in progress while the app patches then fails
    to release its lock ("cannot release un-acquired lock") and the SDK is not set up. So
    no background set-up starts after this, and one in progress is waited for (at most
    FORK_WAIT_S) before the app goes on to patch. The first span then sets the SDK up, on
    the app's own (patched) thread.
    """
    global _patching_announced
    _patching_announced = True
    lock = _prepare_lock
    if lock.acquire(timeout=FORK_WAIT_S):
        lock.release()


def _importing(ident: int) -> bool | None:
    """Whether thread ``ident`` is importing a module now (None: it no longer runs)."""
    frame = sys._current_frames().get(ident)  # noqa: SLF001 - the one way to see another thread's stack
    if frame is None:
        return None
    while frame is not None:
        if frame.f_code.co_filename.startswith("<frozen importlib"):
            return True
        frame = frame.f_back
    return False


_real_fork = None  # os.fork while the background set-up may run (see _wrap_fork)


def _wrap_fork() -> None:
    """Make ``os.fork`` wait for a background set-up in progress, until that set-up ends.

    A child must not inherit a set-up half done: the module and provider locks it holds
    would belong to a thread the child lacks, and the child would hang at its first span.
    An at-fork handler cannot wait for it: handlers registered later (logging's, imported
    by the set-up itself) run first and take locks the set-up needs. So the wait comes
    before ``os.fork`` itself, holding the set-up's lock across the fork.
    """
    global _real_fork
    fork = getattr(os, "fork", None)
    if fork is None or _real_fork is not None:
        return
    _real_fork = fork

    def wrapper():
        held = _prepare_lock.acquire(timeout=FORK_WAIT_S)
        lock = _prepare_lock
        pid = fork()
        if held and pid != 0:
            lock.release()  # the child has a new lock (see _after_fork_in_child)
        return pid

    wrapper.__name__ = fork.__name__
    wrapper.__qualname__ = getattr(fork, "__qualname__", fork.__name__)
    wrapper.__doc__ = fork.__doc__
    wrapper.__wrapped__ = fork  # type: ignore[attr-defined]
    os.fork = wrapper


def _unwrap_fork() -> None:
    """Give ``os.fork`` back once the background set-up is over (if nothing replaced it since)."""
    global _real_fork
    fork = _real_fork
    if fork is not None and getattr(os.fork, "__wrapped__", None) is fork:
        os.fork = fork
    _real_fork = None


_forked_before_set_up = False  # this process forked a child while its SDK was not set up


def _after_fork_in_parent() -> None:
    global _forked_before_set_up
    if _state == "waiting":
        _forked_before_set_up = True


def _after_fork_in_child() -> None:
    global _prepare_lock, _prepare_thread, _forked_before_set_up
    _prepare_lock = threading.Lock()
    _prepare_thread = None
    _forked_before_set_up = False
    if _state == "waiting" and not green.patched():
        # The worker's own background set-up (the parent's thread is not in the child).
        # Not in a child gevent or eventlet patched: the first span sets it up there.
        try:
            _unwrap_fork()
            prepare_soon()
        except Exception as exc:  # noqa: BLE001
            logger.debug("no background set-up in this child: %s", exc)


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
            return
    try:
        from . import light_span  # noqa: F401 - the hooks' span: imported here, not at the first span
    except Exception as exc:  # noqa: BLE001 - the first span imports it (and says why it cannot)
        logger.debug("the light span was not imported at set-up: %s: %s", type(exc).__name__, exc)


def flush(timeout_s: float, final: bool = True) -> bool:
    """Flush what was recorded (nothing to do if the SDK was never set up)."""
    if _state == "set up":
        from . import sdk

        return sdk.flush(timeout_s, final)
    if _state == "declined":
        from . import sdk

        return sdk.flush_app_provider(timeout_s)
    return True
