"""Propagation formats: reading and writing trace context in W3C, B3 and Jaeger headers.

Selected with ``OTEL_PROPAGATORS`` (default ``tracecontext,baggage``). The agent's own
propagators replace the OpenTelemetry API's when the agent loads the API, so every
hook and the app's own ``propagate.inject``/``extract`` calls use them.
"""
