"""urllib3 used directly: each request it sends is one CLIENT span, and carries the trace context.

Waits for ``urllib3.connectionpool``. ``HTTPConnectionPool._make_request`` is patched:
urllib3 calls it once for each request it sends, from ``urlopen`` (every pool, the
HTTPS one and those of a ``PoolManager`` or ``ProxyManager``). So each attempt
``urlopen`` retries and each hop of a redirect a ``PoolManager`` follows is a span of
its own, the siblings numbered by ``http.request.resend_count`` (the length of the
``Retry``'s history; urllib3 1.26 does not pass the ``Retry`` to ``_make_request``, so
there ``urlopen`` is wrapped too, to hand the count over). http.client under it starts
no span of its own.

The propagation headers go into a copy of the request's headers (of the same type: a
dict or an ``HTTPHeaderDict``), passed on in their place: the caller's mapping and the
pool's headers are left as they were.

The span ends when ``_make_request`` returns: after the body with
``preload_content=True`` (urllib3 2), after the response head otherwise. An exception it
raises (urllib3's ``NewConnectionError``, ``ReadTimeoutError`` ...) is recorded and
re-raised untouched; what the app gets after retries (``MaxRetryError``) is urllib3's
business. Under requests (whose hook has the call's span) no span is started here: the
response head is recorded on requests' span, and an attempt urllib3 retries is handed
to requests' hook, which ends the span of the attempt before and starts the next one's.
"""

from __future__ import annotations

from autotrace import api, client_span
from autotrace.hooks import http_client
from autotrace.patching import wrap_function

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType

LIBRARY = "urllib3"
_HEAD_LINES = http_client.HEAD_LINES_KEY


# urllib3 1.26: the resend count of the attempt urlopen is making (set by its wrapper).
_resends = None

# The pool class and its _make_request wrapper, once patched (see wrapped()).
_pool_class: type | None = None
_wrapper = None


def wrapped() -> bool:
    """Whether urllib3's ``_make_request`` is the hook's now (requests' hook then leaves the
    propagation headers to it)."""
    return _pool_class is not None and _pool_class.__dict__.get("_make_request") is _wrapper


def patch(module: ModuleType) -> None:
    global _resends
    pool = module.HTTPConnectionPool
    make_request = pool.__dict__.get("_make_request")
    if make_request is None:
        raise AttributeError("urllib3.connectionpool.HTTPConnectionPool has no _make_request")
    if not _takes(make_request, "retries"):  # urllib3 1.26: only urlopen sees the Retry
        import contextvars

        if _resends is None:
            _resends = contextvars.ContextVar("autotrace_urllib3_resends", default=0)
        wrap_function(pool, "urlopen", _wrap_urlopen)
    global _pool_class, _wrapper
    if wrap_function(pool, "_make_request", _wrap_make_request):
        _pool_class, _wrapper = pool, pool.__dict__["_make_request"]


def _takes(function, name: str) -> bool:
    try:
        code = function.__code__
        return name in code.co_varnames[: code.co_argcount + code.co_kwonlyargcount]
    except Exception:  # noqa: BLE001 - not a plain function
        return False


def _positional_index(function, name: str, after: int = 4) -> int | None:
    """Where ``name`` is in ``function``'s positional parameters after the first ``after`` (self, conn, method, url)."""
    try:
        code = function.__code__
        names = code.co_varnames[: code.co_argcount]
        return names.index(name) - after if name in names[after:] else None
    except Exception:  # noqa: BLE001 - not a plain function
        return None


def _wrap_urlopen(original):
    # urllib3 1.26 retries by calling urlopen again with the Retry (its history grown).
    retries_at = _positional_index(original, "retries", 3)

    def urlopen(self, method, url, *args, **kwargs):
        retries = kwargs.get("retries") if retries_at is None or len(args) <= retries_at else args[retries_at]
        history = getattr(retries, "history", None)
        if not history:
            return original(self, method, url, *args, **kwargs)
        token = _resends.set(len(history))
        try:
            return original(self, method, url, *args, **kwargs)
        finally:
            _resends.reset(token)

    return urlopen


def _wrap_make_request(original):
    headers_at = _positional_index(original, "headers")  # urllib3 2: after body; 1.26: keyword only
    retries_at = _positional_index(original, "retries")
    passes_retries = _takes(original, "retries")

    def _make_request(self, conn, method, url, *args, **kwargs):
        outer = api.get_current().get(api.IN_CLIENT_CALL) if api.loaded else None  # client_span.enclosing, inline
        if outer is not None and LIBRARY in outer.lower:  # under requests' call
            return _under_requests(original, outer.state, self, conn, method, url, args, kwargs)
        call = None
        lines = None
        try:
            if passes_retries:  # _resend_count, inline
                retries = kwargs.get("retries") if retries_at is None or len(args) <= retries_at else args[retries_at]
                history = getattr(retries, "history", None)
                resends = len(history) if history else 0
            else:
                resends = _resends.get() if _resends is not None else 0
            call = client_span.start(LIBRARY, method, _url(self, url), resend_count=resends)
            if call is not None:
                positional = headers_at is not None and len(args) > headers_at
                headers = args[headers_at] if positional else kwargs.get("headers")
                lines = _head_lines(call, conn, headers)
                if lines is not None:  # written into the head by http.client's endheaders
                    conn.__dict__[_HEAD_LINES] = lines  # http_client.stash_head_lines, inline
                elif positional:
                    args = list(args)
                    args[headers_at] = _with_propagation(call, headers)
                else:
                    kwargs["headers"] = _with_propagation(call, headers)
        except Exception:  # noqa: BLE001 - odd arguments: urllib3 itself says so
            pass
        if call is None:
            return original(self, conn, method, url, *args, **kwargs)
        try:
            response = original(self, conn, method, url, *args, **kwargs)
        except BaseException as exc:
            if lines is not None:
                conn.__dict__.pop(_HEAD_LINES, None)  # not sent if it failed before endheaders
            call.fail(exc)
            call.close()
            raise
        if lines is not None:
            conn.__dict__.pop(_HEAD_LINES, None)  # http_client.drop_head_lines, inline
        _record_response(call, response)
        call.close()
        return response

    def _under_requests(original, state, pool, conn, method, url, args, kwargs):
        # requests' call has the span; an attempt urllib3 retries is a span of its own,
        # with its own traceparent (see hooks/requests.py), so the call is told here.
        if state is None or not hasattr(state, "resend"):
            return original(pool, conn, method, url, *args, **kwargs)
        lines = None
        try:
            if passes_retries:  # _resend_count, inline
                retries = kwargs.get("retries") if retries_at is None or len(args) <= retries_at else args[retries_at]
                resent = bool(getattr(retries, "history", None))
            else:
                resent = bool(_resends.get()) if _resends is not None else False
            call = state.resend(method, _url(pool, url)) if resent else state.current
            if state.head_lines:  # requests sent the request as the app made it: the headers go here
                if http_client.sends_head_lines(conn):
                    lines = http_client.head_lines(call.headers())
                if lines is not None:
                    conn.__dict__[_HEAD_LINES] = lines
                else:
                    resent = True  # into urllib3's headers, below
            if resent:  # a copy of urllib3's headers (requests' copy has the first attempt's)
                if headers_at is not None and len(args) > headers_at:
                    args = list(args)
                    args[headers_at] = _with_propagation(call, args[headers_at])
                else:
                    kwargs["headers"] = _with_propagation(call, kwargs.get("headers"))
        except Exception:  # noqa: BLE001 - the attempt is sent as requests made it
            pass
        try:
            response = original(pool, conn, method, url, *args, **kwargs)
        except BaseException as exc:
            if lines is not None:
                conn.__dict__.pop(_HEAD_LINES, None)
            state.error = exc  # recorded if the attempt is retried; else requests' exception is
            raise
        if lines is not None:
            conn.__dict__.pop(_HEAD_LINES, None)
        state.recorded = True
        _record_response(state.current, response)
        return response

    return _make_request


def _head_lines(call: client_span.ClientSpan, conn, headers) -> bytes | None:
    """The propagation headers as lines for http.client's endheaders to add to the head
    (:func:`autotrace.hooks.http_client.stash_head_lines`), or None: they go in a copy of
    the request's headers (:func:`_with_propagation`). None when the request's headers
    hold one of them in any case (replaced in the copy), request headers are captured,
    or the connection's endheaders is not the hook's."""
    if getattr(type(conn), "endheaders", None) is not http_client.wrapped_endheaders or http_client.wrapped_endheaders is None:
        return None  # http_client.sends_head_lines, inline
    if client_span.capture_request_headers_wanted():
        return None
    values = call.headers()
    if headers:
        if type(headers) is not dict:  # an HTTPHeaderDict ...: the copy
            return None
        try:
            if not values.keys().isdisjoint(map(str.lower, headers)):
                return None
        except TypeError:  # a name that is not text
            return None
    return http_client.head_lines(values)


def _with_propagation(call: client_span.ClientSpan, headers):
    """A copy of the request's headers (same type) with the propagation headers in it."""
    if not headers:  # None or empty (a PoolManager's own {}): the propagation headers alone
        return call.new_headers()
    copy = None
    try:
        copy = headers.copy()  # dict, HTTPHeaderDict, a case-insensitive dict ...
        if copy is headers or not hasattr(copy, "__setitem__"):
            copy = None
    except Exception:  # noqa: BLE001
        copy = None
    if copy is None:
        copy = dict(headers.items())
    call.inject(copy)
    return copy


def _url(pool, url) -> str:
    """``url.full``: the pool's scheme, host and port with the request target."""
    if isinstance(url, bytes):
        url = url.decode("latin-1")
    url = url or "/"
    if url[:4].lower() == "http" and "://" in url[:8]:
        return url  # absolute: a request sent to a proxy
    key = (pool.scheme, pool.host, pool.port)
    prefix = _PREFIXES.get(key)
    if prefix is None:
        prefix = _prefix(*key)
        if len(_PREFIXES) >= 256:
            _PREFIXES.clear()  # bounded: start again
        _PREFIXES[key] = prefix
    return prefix + url


# "scheme://host[:port]" by (scheme, host, port) of a pool: the same few pools, request after request.
_PREFIXES: dict[tuple, str] = {}


def _prefix(scheme: str | None, host: str | None, port: int | None) -> str:
    scheme = scheme or "http"
    host = host or ""
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    if port is None or port == client_span.DEFAULT_PORTS.get(scheme):
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{port}"


def _record_response(call: client_span.ClientSpan, response) -> None:
    try:  # urllib3 2's HTTPResponse: its headers listed only when some are to be captured
        call.set_response(response.status, response.version, response.headers.items)
        return
    except AttributeError:
        pass
    try:
        headers = getattr(response, "headers", None)
        call.set_response(
            response.status,
            getattr(response, "version", None),
            # listed only when some are to be captured: urllib3's HTTPResponse (2.x), http.client's (1.26)
            headers.items if headers is not None and hasattr(headers, "items") else response.getheaders,
        )
    except Exception:  # noqa: BLE001 - a response of another shape
        pass
