"""http.client used directly: each request sent on an ``HTTPConnection`` is one CLIENT span.

Waits for ``http.client`` (imported at start-up by almost every app: ``patch`` only
replaces four methods). A request on an ``HTTPConnection`` spans several calls, so is
its span; the span is kept on the connection between them:

- ``putrequest`` starts the span (not made current: the app's code runs between the
  calls), a child of the context current there, with ``url.full`` made from the
  connection's host and port (the tunnel's with a CONNECT proxy; the URL as given when
  it is absolute, as sent to a proxy);
- ``endheaders`` adds the propagation headers (made from the span's own context) to
  the request's head before it is sent. A ``traceparent``, ``tracestate`` or
  ``baggage`` line the app put itself is taken out (a request with two is invalid);
- ``getresponse`` records the response head and ends the span;
- ``close`` ends a span still pending (a request abandoned before its response), as
  does the next ``putrequest`` on the connection, or the connection's garbage
  collection (a ``weakref.finalize``, registered when the span is stored on the
  connection, detached when it ends: the connection is not kept alive).

``conn.request()`` goes through the same three calls. An exception from
``endheaders`` (the connection is made there) or ``getresponse`` is recorded, the span
ended, and the exception re-raised untouched.

Under requests, urllib3 and urllib.request (whose hooks have the call's span) nothing
is done: ``putrequest`` finds their call in the context and stores nothing on the
connection, so the other three find nothing either. urllib3's ``HTTPConnection``
subclass overrides some of these methods and calls the base class's, which is the one
wrapped: once per request.
"""

from __future__ import annotations

import weakref

from autotrace import _log, api, client_span
from autotrace.patching import wrap_function

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType

LIBRARY = "http.client"

# The pending ClientSpan of the request in progress on a connection (its __dict__).
_CALL = "_autotrace_client_call"

_https_class: type | None = None
wrapped_endheaders = None  # HTTPConnection.endheaders, the wrapper (set by patch)
wrapped_putrequest = None  # HTTPConnection.putrequest, the wrapper (set by patch)


def patch(module: ModuleType) -> None:
    global _https_class, wrapped_endheaders, wrapped_putrequest
    _https_class = getattr(module, "HTTPSConnection", None)  # absent without ssl
    cls = module.HTTPConnection
    if wrap_function(cls, "putrequest", _wrap_putrequest):
        wrapped_putrequest = cls.__dict__["putrequest"]
    if wrap_function(cls, "endheaders", _wrap_endheaders):
        wrapped_endheaders = cls.__dict__["endheaders"]
    wrap_function(cls, "getresponse", _wrap_getresponse)
    wrap_function(cls, "close", _wrap_close)


# -- the head lines of a library's call above ---------------------------------------------
# A library that sends its requests through http.client (urllib3, and requests through it)
# can have its call's propagation headers written into the request's head by endheaders
# here, as lines of text, rather than put in a copy of its headers that then goes through
# its own and http.client's putheader (their name and value checks, once per header):
# the values are the agent's own (hex ids, a trace state and baggage as their formats
# write them). They are kept on the connection under the pending call's key (the one
# look-up endheaders makes anyway) from just before the library's request until its
# endheaders, and taken off by the library's hook when its request returns or raises.

def sends_head_lines(conn) -> bool:
    """Whether the next request on ``conn`` would add :func:`stash_head_lines`' lines at
    endheaders (its class's endheaders is the wrapper, not one of its own)."""
    return wrapped_endheaders is not None and getattr(type(conn), "endheaders", None) is wrapped_endheaders


def class_takes_head_lines(cls: type) -> bool:
    """Whether a request on a new ``cls`` connection under a call holding head lines in its
    ``state`` (urllib.request's) gets them: putrequest keeps them, endheaders adds them."""
    return (
        wrapped_endheaders is not None
        and getattr(cls, "endheaders", None) is wrapped_endheaders
        and getattr(cls, "putrequest", None) is wrapped_putrequest
    )


def head_lines(headers: dict[str, str]) -> bytes | None:
    """The header lines of ``headers`` as endheaders adds them, or None when a value could not
    go as it is (a line break or another character that is not printable, one outside
    Latin-1: putheader's checks then)."""
    try:
        if len(headers) == 1:  # traceparent alone, the usual case
            for name, value in headers.items():
                return (name + ": " + value).encode("latin-1") if value.isprintable() else None
        lines = []
        for name, value in headers.items():
            if not value.isprintable():
                return None
            lines.append(name + ": " + value)
        return "\r\n".join(lines).encode("latin-1") if lines else None
    except (AttributeError, TypeError, UnicodeEncodeError):  # not text, not Latin-1
        return None


# The key head lines are kept under in a connection's __dict__ (the pending call's).
HEAD_LINES_KEY = _CALL


def stash_head_lines(conn, lines: bytes) -> None:
    """Have ``lines`` added to the head of the next request on ``conn`` (see :func:`sends_head_lines`)."""
    conn.__dict__[_CALL] = lines


def drop_head_lines(conn) -> None:
    """Take off lines a request did not send (it failed before endheaders)."""
    conn.__dict__.pop(_CALL, None)


def _take(conn) -> client_span.ClientSpan | None:
    try:
        call = conn.__dict__.pop(_CALL, None)
    except AttributeError:
        return None
    return None if type(call) is bytes else call  # head lines left by a failed request: dropped


def _store(conn, call: client_span.ClientSpan) -> None:
    """Keep the pending span on the connection; it ends if the connection is collected first."""
    conn.__dict__[_CALL] = call
    if call.state is None:
        finalizer = weakref.finalize(conn, call.end)
        finalizer.atexit = False
        call.state = finalizer


def _end(call: client_span.ClientSpan) -> None:
    finalizer = call.state
    if finalizer is not None:
        call.state = None
        finalizer.detach()
    call.end()


def _wrap_putrequest(original):
    def putrequest(self, method, url, *args, **kwargs):
        outer = api.get_current().get(api.IN_CLIENT_CALL) if api.loaded else None  # client_span.enclosing, inline
        if outer is not None and LIBRARY in outer.lower:
            # A lower layer of requests', urllib3's or urllib.request's call: a context
            # lookup and nothing else (client_span.start would say None as well), but for
            # the head lines a call may hold (urllib.request's: see stash_head_lines).
            lines = outer.state
            if type(lines) is not bytes:
                return original(self, method, url, *args, **kwargs)
            result = original(self, method, url, *args, **kwargs)
            try:
                self.__dict__[_CALL] = lines
            except AttributeError:  # no instance dictionary: nothing to keep them in
                pass
            return result
        call = None
        try:
            call = client_span.start(LIBRARY, method, _url(self, url), attach=False)
        except Exception:  # noqa: BLE001 - odd arguments: http.client itself says so
            pass
        if call is None:
            return original(self, method, url, *args, **kwargs)
        try:
            result = original(self, method, url, *args, **kwargs)
        except BaseException as exc:
            call.fail(exc)
            call.end()
            raise
        try:
            pending = _take(self)
            if pending is not None:  # a request abandoned before its response
                _end(pending)
            _store(self, call)
        except Exception:  # noqa: BLE001 - no instance dictionary or weak reference: the span ends here
            _end(call)
        return result

    return putrequest


def _wrap_endheaders(original):
    def endheaders(self, *args, **kwargs):
        try:
            call = self.__dict__.pop(_CALL, None)  # _take, inline: nothing there under a library's call
        except AttributeError:
            call = None
        if call is None:
            return original(self, *args, **kwargs)
        if type(call) is bytes:  # the head lines of a library's call above (see stash_head_lines)
            try:
                self._buffer.append(call)
            except Exception:  # noqa: BLE001 - no head in progress: endheaders says so
                pass
            return original(self, *args, **kwargs)
        _inject(self, call)
        try:
            result = original(self, *args, **kwargs)
        except BaseException as exc:  # the connection is made here: refused, DNS, TLS ...
            call.fail(exc)
            _end(call)
            raise
        try:
            _store(self, call)  # until getresponse
        except Exception:  # noqa: BLE001
            _end(call)
        return result

    return endheaders


def _wrap_getresponse(original):
    def getresponse(self, *args, **kwargs):
        # Taken off the connection first: getresponse closes a connection the server
        # closes, and the close wrapper must not end the span before the response.
        try:
            call = self.__dict__.pop(_CALL, None)  # _take, inline
        except AttributeError:
            call = None
        if call is None or type(call) is bytes:
            return original(self, *args, **kwargs)
        try:
            response = original(self, *args, **kwargs)
        except BaseException as exc:
            call.fail(exc)
            _end(call)
            raise
        _record_response(call, response)
        _end(call)
        return response

    return getresponse


def _wrap_close(original):
    def close(self, *args, **kwargs):
        try:
            call = self.__dict__.pop(_CALL, None)  # _take, inline
        except AttributeError:
            call = None
        if call is not None and type(call) is not bytes:
            _end(call)  # abandoned before its response: ended as it stands
        return original(self, *args, **kwargs)

    return close


def _url(conn, url) -> str:
    """``url.full`` of a request on ``conn`` for the target ``url`` passed to putrequest."""
    if isinstance(url, bytes):
        url = url.decode("latin-1")
    url = url or "/"
    if url[:4].lower() == "http" and "://" in url[:8]:
        return url  # absolute: a request sent to a proxy
    https = (_https_class is not None and isinstance(conn, _https_class)) or getattr(conn, "default_port", None) == 443
    scheme = "https" if https else "http"
    tunnel_host = getattr(conn, "_tunnel_host", None)
    if tunnel_host:
        host, port = tunnel_host, getattr(conn, "_tunnel_port", None)
    else:
        host, port = conn.host, conn.port
    if ":" in host and not host.startswith("["):
        host = f"[{host}]"
    if port is None or port == client_span.DEFAULT_PORTS[scheme]:
        return f"{scheme}://{host}{url}"
    return f"{scheme}://{host}:{port}{url}"


def _inject(conn, call: client_span.ClientSpan) -> None:
    """Put the propagation headers in the request's head (still in ``conn._buffer``)."""
    try:
        headers = call.headers()  # none with OTEL_PROPAGATORS=none: the head is sent as it is
        buffer = conn._buffer
        names = frozenset(name.lower().encode("latin-1") for name in headers)
        if names and len(buffer) > 1:
            kept = [buffer[0]]
            for line in buffer[1:]:
                if line.partition(b":")[0].strip().lower() in names:
                    if _log.debug_enabled():
                        _log.logger.debug(
                            "http.client: the %s header set by the application is replaced by the CLIENT span's",
                            line.partition(b":")[0].strip().decode("latin-1", "replace"),
                        )
                    continue
                kept.append(line)
            if len(kept) != len(buffer):
                buffer[:] = kept
        for name, value in headers.items():
            conn.putheader(name, value)
        if client_span.capture_request_headers_wanted():
            client_span.capture_request_headers(call, _buffered_headers(buffer))
    except Exception:  # noqa: BLE001 - a wrong state (endheaders raises its own error) or an odd subclass
        pass


def _buffered_headers(buffer):
    for line in buffer[1:]:
        name, _, value = line.partition(b":")
        yield name.strip().decode("latin-1", "replace"), value.strip().decode("latin-1", "replace")


def _record_response(call: client_span.ClientSpan, response) -> None:
    try:
        call.set_response(
            response.status,
            getattr(response, "version", None),
            response.getheaders,  # called only when some are to be captured
        )
    except Exception:  # noqa: BLE001 - a response_class of the app's own
        pass
