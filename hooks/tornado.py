"""Tornado: one SERVER span per request a ``RequestHandler`` serves, one CLIENT span per
request ``AsyncHTTPClient`` sends.

Six rows of the hook table, one per module (a module that imports another cannot be
patched from that other's hook: it is only half executed then):

- ``tornado.web`` (:func:`patch`), the server side, for apps on ``HTTPServer`` or
  ``Application.listen``:

  - ``PathMatches.match`` and ``RuleRouter.find_handler`` (``tornado.routing``, imported
    by ``tornado.web``): the URL spec that matched the request is noted on the request;
    a router that finds no handler after all (a nested router with no match inside)
    forgets what it noted. Its pattern, made readable (:func:`route_template`:
    ``r"/items/([0-9]+)"`` -> ``/items/{1}``, ``r"/items/(?P<id>[0-9]+)"`` ->
    ``/items/{id}``), becomes ``http.route`` and the span's name ``"GET /items/{1}"``.
    No URL spec (a 404 of the application's own): the name stays ``"GET"``.
  - ``_HandlerDelegate.headers_received``: the span starts once the request's head is
    read (before its body). Its context is current, in the connection's task, only for
    the calls that hand the request on: ``execute``, which creates the handler and
    the task that runs it (so the handler's task, the tasks and callbacks it creates,
    and ``run_in_executor`` with the thread-pool hook, are in the request's context), and
    ``data_received`` of a ``@stream_request_body`` handler.
  - ``RequestHandler._handle_request_exception``: an exception from the handler is
    recorded, unless it is ``Finish`` or an ``HTTPError`` below 500 (which keeps its
    status: a 404 is no error).
  - ``RequestHandler.finish``: after the last chunk is written (a flushed, streamed
    response is measured whole) and ``on_finish`` ran, the status is recorded and the
    span ends. A WebSocket handshake (status 101) leaves it open: the connection is
    the span.
  - ``RequestHandler.on_connection_close``: the client went away before the response
    was finished; the span ends there, with the status only if it was sent (a handler
    that overrides it without calling the base class's ends it at ``finish``).
  - ``FallbackHandler.prepare`` hands the request to another app (a ``WSGIContainer``),
    which answers on the connection itself, later: ``HTTP1Connection.write_headers``
    records that answer's status and ``HTTP1Connection.finish`` ends the span. The span
    is current when the other app runs: a WSGI framework under it (Flask, Django)
    names it by its own route and starts no span of its own.

- ``tornado.websocket`` (:func:`patch_websocket`): ``WebSocketHandler.on_connection_close``
  ends the connection's span (status 101) when the connection closes. On the client
  side, ``WebSocketClientConnection.__init__`` (``websocket_connect``): one CLIENT span
  for the handshake, ended when the connection is open (101) or refused; the
  propagation headers go into the headers ``websocket_connect`` copied for the
  connection. The messages that follow are not under it.

- ``tornado.wsgi`` (:func:`patch_wsgi`): the app a ``WSGIContainer`` is given is wrapped
  as WSGI servers' apps are (:func:`autotrace.wsgi.wrap`): on ``HTTPServer`` directly it
  starts its request's span; behind a ``FallbackHandler`` it adds none.

- ``tornado.httpclient`` (:func:`patch_client`): ``AsyncHTTPClient.fetch``, the entry of
  every backend (simple and curl) and of the blocking ``HTTPClient``. The propagation
  headers go into a copy of the request (``copy.copy``, as Tornado copies it for a
  redirect) with a copy of its headers: the caller's ``HTTPRequest`` and header dict are
  left as they were. The span ends when the returned future is done: after the body;
  ``HTTPClientError`` for a response (a 404, a 500) keeps its status, other failures
  (refused, timeout, TLS) are recorded as exceptions.

- ``tornado.simple_httpclient`` (:func:`patch_simple_client`): ``_HTTPConnection.headers_received``
  records each response head on its hop's span. The simple client follows redirects by
  calling ``fetch`` again with a copy of the request: each hop is a span of its own, a
  sibling of the first under the caller's span, numbered by ``http.request.resend_count``;
  the hop it follows ends then. The curl backend follows redirects inside libcurl: one
  span per ``fetch``, with the final status.

Every wrapper is fail-open: what Tornado returns or raises passes through untouched.
"""

from __future__ import annotations

from autotrace import client_span, server_span
from autotrace.config import http_settings
from autotrace.patching import wrap_function

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType

# Per-request state, on Tornado's HTTPServerRequest (one per request).
_ROUTE = "_autotrace_route"  # the readable template of the URL spec that matched
_SPAN = "_autotrace_span"  # the request's ServerSpan
# On the client's copy of an HTTPRequest: the hop's ClientSpan (a redirect's copy carries it on).
_CALL = "_autotrace_call"


# -- tornado.web: the server -------------------------------------------------------------------


def patch(module: ModuleType) -> None:
    import importlib

    routing = importlib.import_module("tornado.routing")  # imported by tornado.web: complete
    wrap_function(routing.PathMatches, "match", _noting_route)
    wrap_function(routing.RuleRouter, "find_handler", _forgetting_unused_route)
    delegate = module._HandlerDelegate
    wrap_function(delegate, "headers_received", _starting_span)
    wrap_function(delegate, "execute", _in_span)
    wrap_function(delegate, "data_received", _in_span_when_streaming)
    handler = module.RequestHandler
    wrap_function(handler, "_handle_request_exception", lambda original: _recording_exception(original, module))
    wrap_function(handler, "finish", _ending_span)
    wrap_function(handler, "on_connection_close", _ending_on_close)
    # FallbackHandler hands the request to another app (a WSGIContainer), which answers on
    # the connection itself, later: the span ends with that answer.
    wrap_function(module.FallbackHandler, "prepare", _handing_over)
    connection = importlib.import_module("tornado.http1connection").HTTP1Connection  # imported by tornado.web
    wrap_function(connection, "write_headers", _recording_handed_over_status)
    wrap_function(connection, "finish", _ending_handed_over)


def _noting_route(original):
    def match(self, request):
        found = original(self, request)
        if found is not None:
            try:
                request.__dict__[_ROUTE] = _template(self.regex.pattern)
            except Exception:  # noqa: BLE001 - the request is served regardless
                pass
        return found

    return match


def _forgetting_unused_route(original):
    def find_handler(self, request, **kwargs):
        state = getattr(request, "__dict__", None)
        before = state.get(_ROUTE) if state is not None else None
        found = original(self, request, **kwargs)
        if found is None and state is not None and state.get(_ROUTE) is not before:
            state[_ROUTE] = before  # a rule matched, but nothing under it took the request
        return found

    return find_handler


def _starting_span(original):
    """``headers_received``: the span starts (not current: ``execute`` and
    ``data_received``, which hand the request on, make it current)."""

    def headers_received(self, start_line, headers):
        _request_span(self.request)
        return original(self, start_line, headers)

    return headers_received


def _in_span(original):
    """``execute``/``data_received``: with the request's span current (started here for
    a request handed straight to ``Application.__call__``)."""

    def in_span(self, *args):
        span = _request_span(self.request)
        if span is None:
            return original(self, *args)
        span.attach()
        try:
            return original(self, *args)
        finally:
            span.detach()

    return in_span


def _in_span_when_streaming(original):
    """``data_received``: a ``@stream_request_body`` handler's gets the chunks in the request's span."""
    in_span = _in_span(original)

    def data_received(self, chunk):
        if getattr(self, "stream_request_body", False):
            return in_span(self, chunk)
        return original(self, chunk)

    return data_received


def _request_span(request) -> server_span.ServerSpan | None:
    """The request's span, started (and left not current) at the first call; never raises."""
    try:
        state = request.__dict__
        if _SPAN in state:
            return state[_SPAN]
        span = state[_SPAN] = _start(request)
        if span is not None:
            route = state.get(_ROUTE)
            if route:
                span.set_route(route)
        return span
    except Exception:  # noqa: BLE001 - never fail a request
        return None


def _start(request) -> server_span.ServerSpan | None:
    headers = request.headers
    host = headers.get("Host")
    address, port = server_span.host_address(host) if host else (None, None)
    version = request.version or ""
    return server_span.start(
        method=request.method,
        scheme=request.protocol,
        path=request.path,
        query=request.query,
        # get_list as the membership test too: an empty list for a field not in the request.
        headers=server_span.HeaderLookup(headers.get_list, headers.keys, headers.get_list),
        server_address=address,
        server_port=port,
        client_address=request.remote_ip or None,
        protocol_version=version[5:] if version.upper().startswith("HTTP/") else None,
        attach=False,  # made current where the request is handed on
    )


def _span_of(handler) -> server_span.ServerSpan | None:
    try:
        return handler.request.__dict__.get(_SPAN)
    except Exception:  # noqa: BLE001
        return None


def _recording_exception(original, web):
    def _handle_request_exception(self, e):
        span = _span_of(self)
        if span is not None and not span.ended:
            try:
                if not isinstance(e, web.Finish) and not (isinstance(e, web.HTTPError) and e.status_code < 500):
                    span.record_exception(e)
            except Exception:  # noqa: BLE001
                pass
        return original(self, e)

    return _handle_request_exception


def _ending_span(original):
    def finish(self, *args, **kwargs):
        future = original(self, *args, **kwargs)
        span = _span_of(self)
        if span is not None and not span.ended:
            _end(self, span, upgrade_stays_open=True)
        return future

    return finish


def _ending_on_close(original):
    def on_connection_close(self):
        try:
            return original(self)
        finally:
            span = _span_of(self)
            if span is not None and not span.ended:
                # The status only if it was sent (a WebSocket's 101, a streamed response's head).
                _end(self, span, with_status=getattr(self, "_headers_written", False) is True)

    return on_connection_close


def _end(handler, span: server_span.ServerSpan, upgrade_stays_open: bool = False, with_status: bool = True) -> None:
    """Record the response's status (and named headers) and end the span; never raises."""
    try:
        status = handler.get_status()
        if upgrade_stays_open and status == 101:
            return  # a WebSocket: the span is the connection's, ended when it closes
        if not with_status:
            span.end()
            return
        headers = getattr(handler, "_headers", None) if span.response_headers else None
        # The status, the named headers and the end in one call.
        span.finish(status, None, False, headers.get_all() if headers is not None else None)
    except Exception:  # noqa: BLE001
        pass
    span.end()  # ended already, unless the status could not be read


def _handing_over(original):
    def prepare(self):
        span = _span_of(self)
        if span is not None and not span.ended:
            try:
                self.request.connection.__dict__[_SPAN] = span
            except Exception:  # noqa: BLE001 - not an HTTP1Connection: ends at on_connection_close
                pass
        return original(self)

    return prepare


def _recording_handed_over_status(original):
    def write_headers(self, start_line, headers, chunk=None):
        span = self.__dict__.get(_SPAN)
        if span is not None:
            try:
                span.set_status_code(int(start_line.code))
                if http_settings().response_headers:
                    span.capture_response_headers(headers.get_all())
            except Exception:  # noqa: BLE001
                pass
        return original(self, start_line, headers, chunk)

    return write_headers


def _ending_handed_over(original):
    def finish(self):
        try:
            return original(self)
        finally:
            span = self.__dict__.pop(_SPAN, None)
            if span is not None:
                span.end()

    return finish


# -- tornado.websocket -----------------------------------------------------------------------


def patch_websocket(module: ModuleType) -> None:
    wrap_function(module.WebSocketHandler, "on_connection_close", _ending_on_close)
    wrap_function(module.WebSocketClientConnection, "__init__", lambda original: _traced_handshake(original, module))


def _traced_handshake(original, websocket):
    """``websocket_connect``'s connection: one CLIENT span for the handshake (not the messages)."""

    def __init__(self, request, *args, **kwargs):
        call = None
        try:
            call = client_span.start("tornado", "GET", request.url, attach=False)
            if call is not None:
                # The headers websocket_connect copied for this connection (Tornado adds its own to them).
                call.inject(request.headers)
        except Exception:  # noqa: BLE001 - the connection is made regardless
            call = None
        try:
            original(self, request, *args, **kwargs)
        except BaseException as exc:
            if call is not None:
                call.fail(exc)
                call.end()
            raise
        if call is not None:
            try:
                self.connect_future.add_done_callback(lambda done: _handshaken(call, done, websocket))
            except Exception:  # noqa: BLE001
                call.end()

    return __init__


def _handshaken(call: client_span.ClientSpan, done, websocket) -> None:
    try:
        if not done.cancelled():
            exc = done.exception()
            if exc is None:
                call.set_response(101)
            elif getattr(exc, "response", None) is not None and isinstance(getattr(exc, "code", None), int):
                call.set_response(exc.code)  # an HTTPClientError: the server answered, not with 101
            else:
                call.fail(exc)
    except Exception as error:  # noqa: BLE001
        call.report(error)
    call.end()


# -- tornado.wsgi -----------------------------------------------------------------------------


def patch_wsgi(module: ModuleType) -> None:
    wrap_function(module.WSGIContainer, "__init__", _traced_wsgi_app)


def _traced_wsgi_app(original):
    """A ``WSGIContainer``'s app is traced as a WSGI server's: served straight by
    ``HTTPServer``, it starts the request's span; behind a ``FallbackHandler`` it finds
    the Tornado request's span current and adds none."""

    def __init__(self, wsgi_application, *args, **kwargs):
        traced = wsgi_application
        try:
            from autotrace import wsgi

            traced = wsgi.wrap(wsgi_application)
        except Exception:  # noqa: BLE001 - the app is served untraced, never broken
            traced = wsgi_application
        return original(self, traced, *args, **kwargs)

    return __init__


# -- route templates -------------------------------------------------------------------------

_TEMPLATES: dict[str, str] = {}
_TEMPLATES_SIZE = 1024
_METACHARACTERS = frozenset(".^$*+?{}[]|")


def _template(pattern: str) -> str:
    found = _TEMPLATES.get(pattern)
    if found is None:
        found = route_template(pattern)
        if len(_TEMPLATES) >= _TEMPLATES_SIZE:
            _TEMPLATES.clear()
        _TEMPLATES[pattern] = found
    return found


def route_template(pattern: str) -> str:
    """A URL spec's regular expression as a readable route template.

    Each capturing group becomes ``{name}`` (named) or ``{n}`` (its group number, as
    ``match.group(n)`` counts, from 1); the anchors ``^`` and ``$`` go. The rest reads
    as written when it is plain text (escapes such as ``\\.`` undone); when it holds
    other regular-expression syntax (``/items/?``, ``/.*``) it is kept as written:
    still one name per URL spec, never a path.
    """
    if pattern.startswith("^"):
        pattern = pattern[1:]
    if pattern.endswith("$") and not pattern.endswith("\\$"):
        pattern = pattern[:-1]
    plain: list[str] = []  # escapes undone
    written: list[str] = []  # as written
    is_plain = True
    number = 0  # capturing groups opened so far
    i, size = 0, len(pattern)
    while i < size:
        char = pattern[i]
        if char == "\\" and i + 1 < size:
            escaped = pattern[i + 1]
            if escaped.isalnum():  # a class (\d) or an anchor (\b): regular-expression syntax
                is_plain = False
            plain.append(escaped)
            written.append(pattern[i : i + 2])
            i += 2
            continue
        if char == "(":
            end, inner_groups = _group_end(pattern, i)
            if end < 0:
                return pattern  # unbalanced: as written
            body = pattern[i + 1 : end]
            if body.startswith("?P<") and ">" in body:
                number += 1 + inner_groups
                piece = "{" + body[3 : body.index(">")] + "}"
            elif body.startswith("?"):  # not capturing, a look-around, a flag
                is_plain = False
                number += inner_groups
                piece = pattern[i : end + 1]
            else:
                number += 1
                piece = "{%d}" % number
                number += inner_groups
            plain.append(piece)
            written.append(piece)
            i = end + 1
            continue
        if char in _METACHARACTERS:
            is_plain = False
        plain.append(char)
        written.append(char)
        i += 1
    return "".join(plain if is_plain else written)


def _group_end(pattern: str, start: int) -> tuple[int, int]:
    """The index of the ``)`` closing the group opened at ``start`` (-1: none), and how
    many capturing groups it holds."""
    depth, inner, i, size = 0, 0, start, len(pattern)
    in_class = False
    while i < size:
        char = pattern[i]
        if char == "\\":
            i += 2
            continue
        if in_class:
            if char == "]":
                in_class = False
        elif char == "[":
            in_class = True
            if pattern.startswith("]", i + 1) or pattern.startswith("^]", i + 1):
                i += 2 if pattern[i + 1] == "]" else 3  # a leading ] is a literal
                continue
        elif char == "(":
            if depth > 0 and (not pattern.startswith("?", i + 1) or pattern.startswith("?P<", i + 1)):
                inner += 1
            depth += 1
        elif char == ")":
            depth -= 1
            if depth == 0:
                return i, inner
        i += 1
    return -1, 0


# -- tornado.httpclient: the client ----------------------------------------------------------


class _Hop:
    """The client's bookkeeping of a hop: its number, and whether its response head was recorded."""

    __slots__ = ("resend", "responded")

    def __init__(self, resend: int) -> None:
        self.resend = resend
        self.responded = False


def patch_client(module: ModuleType) -> None:
    wrap_function(module.AsyncHTTPClient, "fetch", lambda original: _traced_fetch(original, module))


def _traced_fetch(original, httpclient):
    def fetch(self, request, raise_error=True, **kwargs):
        sent = _prepare(self, request, kwargs, httpclient)
        if sent is None:
            return original(self, request, raise_error, **kwargs)
        copy, call = sent
        call.attach()
        try:
            future = original(self, copy, raise_error)
        except BaseException as exc:
            call.fail(exc)
            call.close()
            raise
        call.detach()
        try:
            future.add_done_callback(lambda done: _fetched(call, done, httpclient))
        except Exception:  # noqa: BLE001 - not a future: end the span now
            call.end()
        return future

    return fetch


def _prepare(client, request, kwargs: dict, httpclient):
    """The request to send (a copy, with the propagation headers) and its hop's span, or None."""
    call = None
    try:
        if getattr(client, "_closed", False):
            return None  # fetch raises: no request is sent
        if isinstance(request, httpclient.HTTPRequest):
            if kwargs:
                return None  # fetch raises ValueError
            import copy as copying

            copy = copying.copy(request)
        elif isinstance(request, str):
            copy = httpclient.HTTPRequest(url=request, **kwargs)  # what fetch would build
        else:
            return None
        previous = getattr(request, _CALL, None) if getattr(request, "original_request", None) is not None else None
        if isinstance(previous, client_span.ClientSpan) and isinstance(previous.state, _Hop):
            # The simple client follows a redirect: the next hop, a sibling of the one it follows.
            previous.end()
            resend = previous.state.resend + 1
            call = client_span.start("tornado", copy.method, copy.url, resend_count=resend, attach=False, sibling_of=previous)
        else:
            resend = 0
            call = client_span.start("tornado", copy.method, copy.url, attach=False)
        if call is None:
            return None
        call.state = _Hop(resend)
        headers = copy.headers = _headers_copy(copy.headers, httpclient)
        call.inject(headers)
        setattr(copy, _CALL, call)
        return copy, call
    except Exception:  # noqa: BLE001 - an odd request: Tornado says what is wrong with it
        if call is not None:
            call.end()
        return None


def _headers_copy(headers, httpclient):
    copy = httpclient.httputil.HTTPHeaders  # tornado.httpclient imports tornado.httputil
    return copy(headers) if headers is not None else copy()


def _fetched(call: client_span.ClientSpan, done, httpclient) -> None:
    """The fetch's future is done: record its response or failure, end the span."""
    try:
        if call.ended:
            return  # a hop a redirect followed: ended when the next one started
        if done.cancelled():
            call.end()
            return
        exc = done.exception()
        if exc is None:
            _respond(call, done.result())
        elif isinstance(exc, httpclient.HTTPClientError) and getattr(exc, "response", None) is not None:
            _respond(call, exc.response)  # a response with an error status: it keeps its status
        else:
            call.fail(exc)
    except Exception as error:  # noqa: BLE001
        call.report(error)
    call.end()


def _respond(call: client_span.ClientSpan, response) -> None:
    hop = call.state
    if isinstance(hop, _Hop) and hop.responded:
        return  # recorded at the head (the simple client)
    headers = getattr(response, "headers", None)
    call.set_response(response.code, None, headers.get_all() if headers is not None else None)


# -- tornado.simple_httpclient ---------------------------------------------------------------


def patch_simple_client(module: ModuleType) -> None:
    wrap_function(module._HTTPConnection, "headers_received", _recording_head)


def _recording_head(original):
    def headers_received(self, first_line, headers):
        try:
            call = getattr(self.request.request, _CALL, None)  # the _RequestProxy's request: the hop's copy
            code = first_line.code
            if isinstance(call, client_span.ClientSpan) and not call.ended and (code == 101 or not 100 <= code < 200):
                call.set_response(code, client_span.protocol_version(first_line.version), headers.get_all())
                if isinstance(call.state, _Hop):
                    call.state.responded = True
        except Exception:  # noqa: BLE001 - the response is read regardless
            pass
        return original(self, first_line, headers)

    return headers_received
