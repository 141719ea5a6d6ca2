"""kombu used directly: each message the app publishes is a PRODUCER span, each it consumes a CONSUMER span.

Waits for ``kombu.messaging`` and patches:

- ``Producer.publish``: a span ``send {destination}`` around the publish (the exchange's
  name, else the routing key: the queue, with the default exchange), its context added to
  the message's ``headers`` (a copy: the caller's dict is left as it was);
- ``Consumer.receive``: what calls a consumer's ``callbacks`` with each message; a span
  ``process {destination}`` around them, its parent from the message's headers as for every
  consumer (:mod:`autotrace.messaging`: the producer's span, or a link; a root span
  without a valid context). An exception from a callback is recorded and re-raised.

``messaging.system`` is ``rabbitmq`` over AMQP (py-amqp, librabbitmq) and ``redis`` over
Redis, else the transport's name; ``messaging.destination.name`` the exchange (or the
routing key), ``messaging.message.id`` the message's ``message_id`` when it has one.

One span per logical operation: a publish under a send that has its span already (Celery
sends its task messages through ``Producer.publish``) starts none, and Celery's and kombu's
own plumbing is left alone: publishes called from Celery or ``kombu.pidbox`` (events,
results, remote control) and consumers whose callbacks are theirs (the rpc result
backend, the event receiver, the remote-control mailbox). Celery's worker receives task
messages with ``on_message``, not ``callbacks``: its task runs have the Celery hook's spans.
"""

from __future__ import annotations

import sys

from autotrace import messaging
from autotrace.patching import wrap_function

TYPE_CHECKING = False
if TYPE_CHECKING:
    from types import ModuleType
    from typing import Any, Callable

# Modules whose use of kombu is the libraries' own plumbing, not the app's messages.
PLUMBING = ("celery", "kombu.pidbox")

# messaging.system by the transport's driver type.
SYSTEMS = {"amqp": "rabbitmq", "librabbitmq": "rabbitmq", "redis": "redis"}


def patch(module: ModuleType) -> None:
    """``kombu.messaging``: the producer's publish and the consumer's dispatch to its callbacks."""
    wrap_function(module.Producer, "publish", _wrap_publish)
    wrap_function(module.Consumer, "receive", _wrap_receive)


def _wrap_publish(original: Callable) -> Callable:
    def publish(self, body, *args, **kwargs):
        call = None
        if not args and messaging.current_send() is None and not _plumbing(sys._getframe(1).f_globals.get("__name__")):
            call = _start_send(self, kwargs)
        if call is None:
            return original(self, body, *args, **kwargs)
        return messaging.run(call, original, self, body, *args, **kwargs)

    return publish


def _start_send(producer: Any, kwargs: dict) -> messaging.MessagingSpan | None:
    try:
        routing_key = kwargs.get("routing_key")
        if routing_key is None:
            routing_key = producer.routing_key
        exchange = kwargs.get("exchange")
        if exchange is None:
            exchange = producer.exchange
        exchange_name = exchange if isinstance(exchange, str) else getattr(exchange, "name", None)
        destination = exchange_name or routing_key or None
        call = messaging.send(_system(producer.channel), destination or "(default)", destination=destination)
        if call is not None:
            headers = kwargs.get("headers")
            headers = dict(headers) if isinstance(headers, dict) else {}
            call.inject(headers)
            kwargs["headers"] = headers
            if routing_key:
                call.set_attributes({"messaging.rabbitmq.destination.routing_key": str(routing_key)})
        return call
    except Exception:  # noqa: BLE001 - published untraced
        return None


def _wrap_receive(original: Callable) -> Callable:
    def receive(self, body, message):
        call = None
        callbacks = self.callbacks
        if callbacks and not any(_plumbing(_module_of(callback)) for callback in callbacks):
            call = _start_process(self, message)
        if call is None:
            return original(self, body, message)
        return messaging.run(call, original, self, body, message)

    return receive


def _start_process(consumer: Any, message: Any) -> messaging.MessagingSpan | None:
    try:
        delivery = getattr(message, "delivery_info", None) or {}
        destination = delivery.get("exchange") or delivery.get("routing_key")
        if not destination:
            queues = getattr(consumer, "queues", None) or ()
            destination = getattr(queues[0], "name", None) if queues else None
        properties = getattr(message, "properties", None) or {}
        return messaging.process(
            _system(consumer.channel),
            destination or "(default)",
            getattr(message, "headers", None),
            destination=destination,
            message_id=properties.get("message_id") if isinstance(properties, dict) else None,
        )
    except Exception:  # noqa: BLE001 - handled untraced
        return None


def _system(channel: Any) -> str:
    try:
        driver = channel.connection.client.transport.driver_type
    except Exception:  # noqa: BLE001
        return "kombu"
    return SYSTEMS.get(driver, str(driver))


def _module_of(callback: Any) -> str | None:
    function = getattr(callback, "func", callback)  # a functools.partial
    function = getattr(function, "__func__", function)  # a bound method
    return getattr(function, "__module__", None)


def _plumbing(module: str | None) -> bool:
    return module is not None and any(module == name or module.startswith(name + ".") for name in PLUMBING)
