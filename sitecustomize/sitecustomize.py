"""autotrace's sitecustomize: the directory holding it is first on PYTHONPATH under `autotrace run`.

It only bootstraps. Python imports one ``sitecustomize``, so this one also runs the
user's own ``sitecustomize`` that it hides (next on ``sys.path``), exactly once, before
the agent starts, so that whatever the user's sets up (environment, a TracerProvider)
is in place. An error in the user's module is re-raised, after the agent started, so
that ``site`` reports it as it would without autotrace.
"""

import os
import sys


def _run_hidden_sitecustomize():
    from importlib.machinery import PathFinder
    from importlib.util import module_from_spec

    here = os.path.normcase(os.path.realpath(os.path.dirname(os.path.abspath(__file__))))
    cwd = os.getcwd()
    path = [p for p in sys.path if os.path.normcase(os.path.realpath(p or cwd)) != here]
    spec = PathFinder.find_spec("sitecustomize", path)
    if spec is None or spec.loader is None:
        return
    module = module_from_spec(spec)
    sys.modules["sitecustomize"] = module
    try:
        spec.loader.exec_module(module)
    except BaseException:
        sys.modules.pop("sitecustomize", None)
        raise


def _start_agent():
    try:
        from autotrace import bootstrap
    except Exception as exc:  # noqa: BLE001 - another interpreter or a broken install
        sys.stderr.write(
            "autotrace WARNING: not tracing this process: cannot import autotrace in %s (%s: %s)\n"
            % (sys.executable, type(exc).__name__, exc)
        )
        return
    bootstrap.start()


if not getattr(sys, "_autotrace_site_ran", False):
    sys._autotrace_site_ran = True
    try:
        _run_hidden_sitecustomize()
    finally:
        _start_agent()
