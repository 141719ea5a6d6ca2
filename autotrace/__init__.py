"""autotrace: zero-code distributed tracing for Python services.

Importing this package is cheap on purpose: it imports no OpenTelemetry code and
no instrumented library. The work happens in :mod:`autotrace.bootstrap`, which the
launcher's ``sitecustomize`` runs at interpreter start-up.
"""

from ._version import __version__

__all__ = ["__version__"]
