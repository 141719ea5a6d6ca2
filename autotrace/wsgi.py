"""A WSGI app wrapped with its SERVER span; server hooks wrap whatever app they are given.

The span ends when the response is complete: when the response iterable is exhausted
or closed (a streaming response is measured whole), not when the app returns. A list
or tuple response is complete already and is returned as it is, so servers still see
its length (wsgiref sets Content-Length from it); so is the server's own file wrapper
(``wsgi.file_wrapper``, which servers send with ``sendfile``; the span then ends when
the app returns). Any other iterable is wrapped, keeping its length if it has one.
The app's exceptions are recorded and re-raised untouched; one raised before anything
was sent makes the status 500, which the server then answers. Its return value is
never replaced by anything that behaves differently.
"""

from __future__ import annotations

from . import api, server_span

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Callable, Iterable

_MARK = "__autotrace_wsgi__"


def wrap(app: Callable) -> Callable:
    """The app, traced (idempotent: a wrapped app is returned as it is)."""
    if app is None or getattr(app, _MARK, False):
        return app
    return TracedWSGIApp(app)


def traced_method(original: Callable) -> Callable:
    """For ``patching.wrap_function``: a framework's ``__call__`` that traces its requests.

    Under a server hook the request's span is current already and the call goes straight
    to the framework; under a server no hook knows, the framework starts the span itself.
    """

    def __call__(self, environ, start_response):
        if server_span.current() is not None:
            return original(self, environ, start_response)
        return call(original.__get__(self, type(self)), environ, start_response)

    return __call__


class TracedWSGIApp:
    __autotrace_wsgi__ = True

    def __init__(self, app: Callable) -> None:
        self.__wrapped__ = app

    def __getattr__(self, name: str):
        # Servers and tools may look at the app's own attributes.
        if name == "__wrapped__":  # not set yet (copy, pickle): no endless recursion
            raise AttributeError(name)
        return getattr(self.__wrapped__, name)

    def __call__(self, environ: dict, start_response: Callable):
        return call(self.__wrapped__, environ, start_response)


def call(app: Callable, environ: dict, start_response: Callable):
    """Call ``app`` within the request's SERVER span, as a wrapped app is called.

    For a framework's own WSGI entry point (a method, bound per call), which cannot be
    wrapped once: ``wsgi.call(bound_method, environ, start_response)``.
    """
    span = _start(environ)
    if span is None:
        return app(environ, start_response)

    def traced_start_response(status, headers, exc_info=None):
        try:
            span.set_status_code(int(str(status)[:3]))
            if span.response_headers:
                span.capture_response_headers(headers)
        except Exception:  # noqa: BLE001 - a malformed status is the server's business
            pass
        return start_response(status, headers, exc_info) if exc_info is not None else start_response(status, headers)

    try:
        result = app(environ, traced_start_response)
    except BaseException as exc:
        if isinstance(exc, Exception):  # nothing sent yet: the server answers 500
            span.set_status_code(500)
        span.record_exception(exc)
        span.detach()
        span.end()
        raise
    span.detach()
    if isinstance(result, (list, tuple)) or _is_file_wrapper(result, environ):
        span.end()
        return result
    if hasattr(type(result), "__len__"):  # servers read it (Content-Length): keep it
        return _SizedClosingIterable(result, span)
    return _ClosingIterable(result, span)


def _is_file_wrapper(result, environ: dict) -> bool:
    """Whether the response is the server's file wrapper, which it must see as it is."""
    try:
        wrapper = environ.get("wsgi.file_wrapper")
        return isinstance(wrapper, type) and isinstance(result, wrapper)
    except Exception:  # noqa: BLE001
        return False


class _ClosingIterable:
    """Iterates the app's response in the request's context; ends the span at the end."""

    def __init__(self, result: Iterable, span: server_span.ServerSpan) -> None:
        self._result = result
        self._iterator = None
        self._span = span
        self._context = span.context
        self._yielded = False

    def __iter__(self):
        return self

    def __next__(self):
        token = api.set_current(self._context)  # the API is loaded: a span was started
        try:
            if self._iterator is None:
                self._iterator = iter(self._result)
            item = next(self._iterator)
        except StopIteration:
            self._span.end()
            raise
        except BaseException as exc:
            if not self._yielded and isinstance(exc, Exception):  # nothing sent yet: a 500
                self._span.set_status_code(500)
            self._span.record_exception(exc)
            self._span.end()
            raise
        finally:
            api.detach(token)
        self._yielded = True
        return item

    def close(self) -> None:
        try:
            close = getattr(self._result, "close", None)
            if close is not None:
                token = api.set_current(self._context)
                try:
                    close()
                finally:
                    api.detach(token)
        finally:
            self._span.end()

    def __getattr__(self, name: str):
        return getattr(self._result, name)


class _SizedClosingIterable(_ClosingIterable):
    """A wrapped response that has a length (wsgiref and waitress set Content-Length from it)."""

    def __len__(self) -> int:
        return len(self._result)


def _start(environ: dict) -> server_span.ServerSpan | None:
    try:
        get = environ.get
        query = get("QUERY_STRING", "")
        raw = get("RAW_URI") or get("REQUEST_URI")
        if isinstance(raw, str) and raw.startswith("/"):
            # The target as sent (gunicorn, waitress, werkzeug): the path undecoded, as
            # http.server and ASGI servers (raw_path) give it.
            path = raw.partition("?")[0].partition("#")[0]
        else:
            path = get("SCRIPT_NAME", "") + get("PATH_INFO", "") or "/"
        host = get("HTTP_HOST")
        address, port = server_span.host_address(host) if host else (None, None)
        if port is None:
            port = get("SERVER_PORT")
            port = int(port) if port and str(port).isdigit() else None
        protocol = get("SERVER_PROTOCOL")
        return server_span.start(
            get("REQUEST_METHOD", "GET"),
            get("wsgi.url_scheme", "http"),
            path if path.isascii() else _latin1_to_text(path),
            query if query.isascii() else _latin1_to_text(query),
            EnvironLookup(environ),
            address or get("SERVER_NAME"),
            port,
            get("REMOTE_ADDR"),
            _versions.get(protocol) or _protocol_version(protocol),
            get("HTTP_USER_AGENT"),
        )
    except Exception:  # noqa: BLE001 - never fail a request
        return None


class EnvironLookup(server_span.HeaderLookup):
    """A WSGI environ's request headers (``HTTP_*``, ``CONTENT_TYPE``, ``CONTENT_LENGTH``) as a
    :class:`~autotrace.server_span.HeaderLookup`, made without a closure for each request."""

    __slots__ = ()

    def __init__(self, environ: dict) -> None:
        self._lookup = environ
        self.contains = None

    def __call__(self, name: str) -> list[str]:
        return _environ_values(self._lookup, name)

    def listed(self) -> list[str]:
        return [key[5:].replace("_", "-") for key in self._lookup if key.startswith("HTTP_")]

    def absent(self, names: frozenset[str]) -> bool:
        """Whether none of these header names is in the environ: one set operation."""
        keys = _environ_keys.get(names)
        if keys is None:
            keys = _environ_keys[names] = frozenset(_environ_key(name) for name in names)
        return self._lookup.keys().isdisjoint(keys)


# The environ keys of the sets of header names asked about (the propagators' fields: few sets).
_environ_keys: dict[frozenset[str], frozenset[str]] = {}


def _environ_key(name: str) -> str:
    """A (lower-case) header name's environ key (``content-type`` -> ``CONTENT_TYPE``,
    ``user-agent`` -> ``HTTP_USER_AGENT``)."""
    if name in ("content-type", "content-length"):
        return name.upper().replace("-", "_")
    return "HTTP_" + name.upper().replace("-", "_")


def _environ_values(environ: dict, name: str) -> list[str]:
    value = environ.get(_environ_key(name))
    return [value] if value else []


def _latin1_to_text(value: str) -> str:
    """WSGI strings carry the raw bytes as latin-1; give back the UTF-8 text where it is UTF-8."""
    try:
        return value.encode("latin-1").decode("utf-8")
    except (UnicodeEncodeError, UnicodeDecodeError):
        return value


def _protocol_version(protocol: str | None) -> str | None:
    """``SERVER_PROTOCOL`` as ``network.protocol.version`` (``HTTP/1.1`` -> ``1.1``), kept per value."""
    version = protocol[5:] if protocol and protocol.upper().startswith("HTTP/") else None
    if version is not None and len(_versions) < 16:
        _versions[protocol] = version
    return version


_versions: dict[str, str] = {}  # SERVER_PROTOCOL -> its version (few values: bounded)
