"""``autotrace view``: a local trace viewer that ships with the agent.

An OTLP receiver (HTTP and gRPC), a SQLite store and a web UI with the Jaeger query API, in
one command, for one machine. Production stays on the OpenTelemetry Collector and a real
backend. Nothing here is imported by a traced app or at agent start-up: only the ``view``
sub-command imports this package.
"""
