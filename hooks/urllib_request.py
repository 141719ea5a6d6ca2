"""urllib.request: each request it sends is one CLIENT span, and carries the trace context.

Waits for ``urllib.request``. ``AbstractHTTPHandler.do_open`` is patched: the HTTP and
HTTPS handlers (and an app's subclasses of them) send every request through it, once
per request. A redirect is a new ``open`` of the redirected request, so a new
``do_open``: each hop is a span of its own, the hops siblings under the caller's span,
numbered by ``http.request.resend_count`` (from the redirect handler's count of hops).
http.client under it starts no span of its own.

The propagation headers go into the ``Request``'s ``unredirected_hdrs`` (which
``do_open`` prefers to its ``headers``) for the time of the call, and the ``Request``
is put back exactly as it was after: a ``traceparent`` the app set on it is replaced in
what is sent, and is still there after.

The span ends when ``do_open`` returns: the response head has been received. A 4xx or
5xx response is returned by ``do_open`` (the ``HTTPError`` comes later, from the error
processor): its status makes the span an error. An exception (``URLError`` for a
refused connection or an unknown host, a timeout) is recorded and re-raised untouched.
"""

from __future__ import annotations

from autotrace import client_span
from autotrace.hooks import http_client
from autotrace.patching import wrap_function

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType

LIBRARY = "urllib"

_MISSING = object()


def patch(module: ModuleType) -> None:
    wrap_function(module.AbstractHTTPHandler, "do_open", _wrap_do_open)


def _wrap_do_open(original):
    def do_open(self, http_class, req, **http_conn_args):
        headers = None
        call = None
        try:
            redirects = getattr(req, "redirect_dict", None)  # set by the redirect handler: hops so far
            call = client_span.start(
                LIBRARY,
                req.get_method(),
                req.full_url,
                resend_count=sum(redirects.values()) if redirects else 0,
            )
            if call is not None:
                headers = _inject(call, req, http_class)
        except Exception:  # noqa: BLE001 - not a urllib Request: urllib itself says so
            _restore(req, headers)
            headers = None
        if call is None:
            return original(self, http_class, req, **http_conn_args)
        try:
            response = original(self, http_class, req, **http_conn_args)
        except BaseException as exc:
            call.fail(exc)
            call.close()
            _restore(req, headers)
            raise
        _restore(req, headers)
        _record_response(call, response)
        call.close()
        return response

    return do_open


def _inject(call: client_span.ClientSpan, req, http_class: type | None = None) -> list[str] | _RequestHeaders | None:
    """Put the propagation headers in the request's ``unredirected_hdrs``; what :func:`_restore` undoes.

    Usually the request has none of them, in any case (the names checked in one pass over
    each dictionary, no call per key) and no header is captured: they are left in the
    call's ``state`` as head lines for http.client's hook to add (``http_class`` its own
    putrequest and endheaders: see ``http_client.stash_head_lines``), the request not
    changed at all (None returned); else each is added under urllib's capitalized key,
    and the keys added are returned. Else through :class:`_RequestHeaders`, which
    replaces and puts back what the app set.
    """
    values = call.headers()
    capture = client_span.capture_request_headers_wanted()
    if not values and not capture:
        return None
    unredirected = req.unredirected_hdrs
    names = values.keys()
    try:
        fresh = names.isdisjoint(map(str.lower, unredirected)) and names.isdisjoint(map(str.lower, req.headers))
    except TypeError:  # a key that is not text
        fresh = False
    if fresh and not capture:
        lines = http_client.head_lines(values) if http_client.class_takes_head_lines(http_class) else None
        if lines is not None:
            # http.client's hook under this call adds them to the head (see
            # http_client.stash_head_lines): the request is not changed at all.
            call.state = lines
            return None
        added = []
        for name, value in values.items():
            key = name.capitalize()
            unredirected[key] = value
            added.append(key)
        return added
    headers = _RequestHeaders(req)
    try:
        call.inject(headers)
    except BaseException:
        headers.restore()
        raise
    return headers


def _restore(req, headers: list[str] | _RequestHeaders | None) -> None:
    """Put the request back as it was before :func:`_inject`."""
    if headers is None:
        return
    if type(headers) is list:
        try:
            unredirected = req.unredirected_hdrs
            for key in headers:
                unredirected.pop(key, None)
        except Exception:  # noqa: BLE001
            pass
    else:
        headers.restore()


class _RequestHeaders:
    """A ``Request``'s headers as the mapping :meth:`ClientSpan.inject` writes to.

    ``get`` finds what the app set (in ``headers`` or ``unredirected_hdrs``, any case);
    ``__setitem__`` writes to ``unredirected_hdrs`` under urllib's capitalized key and
    takes out a key of another case (which ``do_open`` would send in place of ours);
    :meth:`restore` puts every dictionary back as it was, in the same order.
    """

    __slots__ = ("request", "saved", "snapshots")

    def __init__(self, request) -> None:
        self.request = request
        self.saved: dict[str, object] = {}  # capitalized key -> value before (or _MISSING)
        self.snapshots: list[tuple[dict, dict]] = []  # (dictionary, its copy) when a key was taken out

    def get(self, name: str, default=None):
        key = name.capitalize()
        request = self.request
        for mapping in (request.unredirected_hdrs, request.headers):
            value = mapping.get(key)
            if value is not None:
                return value
        lower = name.lower()
        for mapping in (request.unredirected_hdrs, request.headers):
            for other, value in mapping.items():
                if isinstance(other, str) and other.lower() == lower:
                    return value
        return default

    def __setitem__(self, name: str, value: str) -> None:
        key = name.capitalize()
        request = self.request
        lower = name.lower()
        for mapping in (request.unredirected_hdrs, request.headers):
            for other in mapping:  # almost always none: the list is made only when one is found
                if other != key and isinstance(other, str) and other.lower() == lower:
                    break
            else:
                continue
            others = [k for k in mapping if k != key and isinstance(k, str) and k.lower() == lower]
            if others:
                if not any(saved is mapping for saved, _ in self.snapshots):
                    self.snapshots.append((mapping, dict(mapping)))
                for other in others:
                    del mapping[other]
        unredirected = request.unredirected_hdrs
        if key not in self.saved:
            self.saved[key] = unredirected.get(key, _MISSING)
        unredirected[key] = value

    def items(self):
        # What do_open sends (for header capture): unredirected_hdrs first, then headers.
        request = self.request
        merged = dict(request.unredirected_hdrs)
        merged.update({k: v for k, v in request.headers.items() if k not in merged})
        return merged.items()

    def restore(self) -> None:
        try:
            snapshots, self.snapshots = self.snapshots, []
            for mapping, copy in snapshots:  # a copy may hold a value of ours: put back below
                mapping.clear()
                mapping.update(copy)
            unredirected = self.request.unredirected_hdrs
            saved, self.saved = self.saved, {}
            for key, value in saved.items():
                if value is _MISSING:
                    unredirected.pop(key, None)
                else:
                    unredirected[key] = value
        except Exception:  # noqa: BLE001
            pass


def _record_response(call: client_span.ClientSpan, response) -> None:
    try:
        call.set_response(
            response.status,
            getattr(response, "version", None),
            response.getheaders,  # called only when some are to be captured
        )
    except Exception:  # noqa: BLE001 - an http_class of the app's own
        pass
