"""One module per instrumented library, installed as ``autotrace.hooks``.

Each hook module reads top to bottom: the module it waits for, what it patches, the
wrappers; its ``patch(module)`` is called by :mod:`autotrace.registry` right after the
app imports that module. Shared logic lives in ``autotrace/``, not here.
"""
