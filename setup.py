"""Ships ``autotrace-agent.pth`` at the top of site-packages (activation by environment),
and builds the optional C extension ``autotrace._speedups`` (see the end of this file).

Everything else is in pyproject.toml. build_py copies the file into wheels, and the
editable wheel gets it beside the editable finder (whose ``__editable__`` .pth sorts, and
so runs, first) through ``editable_wheel._select_strategy``, a private setuptools method:
setuptools offers no public way to add a file to an editable wheel.

Why not declarative: setuptools' ``data-files`` install under the environment's prefix,
not site-packages. hatchling 1.33 does the wheel declaratively (``sources`` maps hooks/ to
autotrace/hooks and sitecustomize/ to autotrace/_sitecustomize, ``force-include`` puts the
.pth at the top), but its editable build refuses a ``sources`` entry that adds a prefix
("Dev mode installations are unsupported when any path rewrite in the `sources` option
changes a prefix rather than removes it", pfmoore/editables#20); its ``dev-mode-dirs``
only adds directories to sys.path, which leaves ``autotrace.hooks`` unimportable and makes
sitecustomize/ a top-level ``sitecustomize`` that every interpreter of the venv would run.
flit-core and pdm-backend have no per-package directory mapping at all.
"""

import os

from setuptools import Extension, setup
from setuptools.command.build_py import build_py

PTH = "autotrace-agent.pth"
HERE = os.path.dirname(os.path.abspath(__file__))


class BuildPyWithPth(build_py):
    def run(self):
        super().run()
        if not getattr(self, "editable_mode", False):
            self.copy_file(os.path.join(HERE, PTH), os.path.join(self.build_lib, PTH), preserve_mode=0)

    def get_outputs(self, include_bytecode=True):
        outputs = super().get_outputs(include_bytecode)
        if getattr(self, "editable_mode", False):
            return outputs
        return outputs + [os.path.join(self.build_lib, PTH)]


commands = {"build_py": BuildPyWithPth}

try:
    from setuptools.command.editable_wheel import editable_wheel

    class _StrategyWithPth:
        def __init__(self, inner):
            self.inner = inner

        def __enter__(self):
            self.inner.__enter__()
            return self

        def __exit__(self, *exc_info):
            return self.inner.__exit__(*exc_info)

        def __call__(self, wheel, files, mapping):
            self.inner(wheel, files, mapping)
            with open(os.path.join(HERE, PTH), "rb") as file:
                wheel.writestr(PTH, file.read())

    class EditableWheelWithPth(editable_wheel):
        def _select_strategy(self, *args, **kwargs):
            return _StrategyWithPth(super()._select_strategy(*args, **kwargs))

    commands["editable_wheel"] = EditableWheelWithPth
except (ImportError, AttributeError):  # an old setuptools: editable installs lack the .pth
    pass

# The light span's encoder in C (autotrace/_speedups.c). Optional: without a compiler (or
# Python's headers) the build goes on without it and the agent uses the pure-Python code,
# the reference (autotrace.otlp_encode). ``autotrace doctor`` says which one is in use.
# AUTOTRACE_PURE_WHEEL=1 leaves it out: a py3-none-any wheel, for an image or machine whose
# Python version or platform differs from the one building it (docs/deploy.md).
SPEEDUPS = Extension("autotrace._speedups", sources=["autotrace/_speedups.c"], optional=True)
PURE = os.environ.get("AUTOTRACE_PURE_WHEEL", "").strip().lower() in ("1", "true", "yes")

setup(cmdclass=commands, ext_modules=[] if PURE else [SPEEDUPS])
