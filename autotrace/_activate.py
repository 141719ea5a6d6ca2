"""Activation by environment only: ``AUTOTRACE_ENABLED=true`` with no launcher.

The ``autotrace-agent.pth`` file in site-packages imports this module only when the
variable is set, so an inactive install costs one environment lookup per start-up. It
puts the launcher's ``sitecustomize`` directory first on ``sys.path``; ``site`` imports
``sitecustomize`` after processing ``.pth`` files, so the agent starts exactly as under
``autotrace run``.
"""

import os
import sys

from . import _sitecustomize

_directory = os.path.dirname(os.path.abspath(_sitecustomize.__file__))
if _directory not in sys.path:
    sys.path.insert(0, _directory)
