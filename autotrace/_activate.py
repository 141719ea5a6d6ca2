"""Activation by environment only: ``AUTOTRACE_ENABLED=true`` with no launcher.

The ``autotrace-agent.pth`` file in site-packages imports this module only when the
variable is set to something other than false, so an inactive install costs one
environment lookup per start-up. When the value is true, it puts the launcher's
``sitecustomize`` directory first on ``sys.path``; ``site`` imports ``sitecustomize``
after processing ``.pth`` files, so the agent starts exactly as under ``autotrace run``.
Any other value (``enabled``, ``ture``) gets one warning naming it, and nothing starts
(unless the directory is on ``PYTHONPATH`` already, as ``autotrace run`` puts it).
"""

import os
import sys

from . import _sitecustomize

TRUE = ("1", "true", "yes", "on")  # as autotrace-agent.pth; its false values are config.ENABLED_FALSE

_directory = os.path.dirname(os.path.abspath(_sitecustomize.__file__))
if os.environ.get("AUTOTRACE_ENABLED", "").strip().lower() in TRUE:
    if _directory not in sys.path:
        sys.path.insert(0, _directory)
elif _directory not in sys.path:  # on PYTHONPATH (``autotrace run``), the agent starts anyway
    from .config import warn_about_activation

    warn_about_activation()
