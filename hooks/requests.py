"""requests: each request it sends is one CLIENT span, and carries the trace context.

Waits for ``requests.sessions``. ``Session.send`` is patched, so every helper
(``requests.get`` ...) and every session is covered, whatever adapter it mounts; urllib3
and http.client under it start no span of their own. The propagation headers go into
the ``PreparedRequest`` for the time of the call and are taken out after, so the
caller's object is left as it was.

The span ends when ``send`` returns: after the body for a call that reads it, after
the response head with ``stream=True``.

Redirects: requests sends each hop with ``Session.send`` again, from
``resolve_redirects``. Each hop is a span of its own, the hops siblings under the
caller's span, numbered by ``http.request.resend_count``; the first hop's span ends when
``resolve_redirects`` starts on its response. Exchanges requests makes inside one
``send`` (the second round of digest authentication, retries by an adapter's
``max_retries``) are part of that send's span.
"""

from __future__ import annotations

from autotrace import client_span
from autotrace.patching import wrap_function

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType


def patch(module: ModuleType) -> None:
    wrap_function(module.Session, "send", lambda original: _wrap_send(original, module.PreparedRequest))
    wrap_function(module.SessionRedirectMixin, "resolve_redirects", _wrap_resolve_redirects)


def _wrap_send(original, prepared_request: type):
    def send(self, request, **kwargs):
        if not isinstance(request, prepared_request):
            return original(self, request, **kwargs)  # requests itself says what is wrong
        call = None
        try:
            call = client_span.start("requests", request.method, request.url)
            previous = call.inject(request.headers) if call is not None else None
        except Exception:  # noqa: BLE001 - an odd PreparedRequest: sent as it is
            if call is not None:
                call.close()
            call = None
        if call is None:
            return original(self, request, **kwargs)
        try:
            response = original(self, request, **kwargs)
        except BaseException as exc:
            call.fail(exc)
            call.close()
            client_span.restore(request.headers, previous)
            raise
        if not call.ended:
            _record_response(call, response)
        call.close()
        client_span.restore(request.headers, previous)
        return response

    return send


def _wrap_resolve_redirects(original):
    def resolve_redirects(self, resp, req, *args, **kwargs):
        # The first hop ends where requests starts following its redirect; the hops that
        # follow are sent from here, each a span of its own (see the module docstring).
        try:
            call = client_span.current_call()
            if (
                call is not None
                and call.library == "requests"
                and not call.ended
                and not kwargs.get("yield_requests")
                and self.get_redirect_target(resp)
            ):
                _record_response(call, resp)
                call.end()
        except Exception:  # noqa: BLE001 - the span ends with the call instead
            pass
        return original(self, resp, req, *args, **kwargs)

    return resolve_redirects


def _record_response(call: client_span.ClientSpan, response) -> None:
    try:
        raw = getattr(response, "raw", None)
        version = client_span.protocol_version(getattr(raw, "version", None))
        call.set_response(response.status_code, version, response.headers.items())
    except Exception:  # noqa: BLE001 - a response object of a custom adapter
        pass
