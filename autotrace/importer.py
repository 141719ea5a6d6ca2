"""Post-import hooks: call a function right after a named module has been imported.

The same contract as wrapt's ``register_post_import_hook`` (and modelled on wrapt's
``importer.py``), in a few dozen lines with no imports beyond ``sys`` and ``threading``:
importing the ``wrapt`` package itself costs tens of milliseconds (it imports
``asyncio``), which the start-up budget cannot afford on every process.

- A hook for a module that is already imported is called at once.
- Otherwise a finder at the front of ``sys.meta_path`` notices the import, lets the
  finders behind it find the module, and wraps the loader so that the hooks run after
  the module's code has executed, before the importer gets the module back.
- The module never sees the wrapper: its ``__loader__`` and ``__spec__.loader`` are the
  real loader's while its code runs.
- A hook that raises is reported and swallowed: it never fails the app's ``import``.
"""

from __future__ import annotations

import sys
import threading

TYPE_CHECKING = False  # typing is not imported at start-up
if TYPE_CHECKING:
    from types import ModuleType
    from typing import Callable

    Hook = Callable[[ModuleType], None]

_lock = threading.Lock()
_pending: dict[str, list[Hook]] = {}
_finder: _PostImportFinder | None = None


def register(name: str, hook: Hook) -> None:
    """Call ``hook(module)`` once module ``name`` is imported (now, if it already is)."""
    global _finder
    with _lock:
        if _finder is None:
            _finder = _PostImportFinder()
            sys.meta_path.insert(0, _finder)
        module = sys.modules.get(name)
        if module is None:
            _pending.setdefault(name, []).append(hook)
    if module is not None:
        _call(hook, module)


def _notify(module: ModuleType) -> None:
    with _lock:
        hooks = _pending.pop(module.__name__, ())
    # Outside the lock: a hook may import, and so re-enter the finder.
    for hook in hooks:
        _call(hook, module)


def _call(hook: Hook, module: ModuleType) -> None:
    try:
        hook(module)
    except Exception as exc:  # noqa: BLE001 - the import must succeed regardless
        from ._log import logger

        logger.warning("post-import hook for %s failed: %s: %s", module.__name__, type(exc).__name__, exc)


class _PostImportFinder:
    """Finds nothing itself; wraps the loader other finders return for watched modules."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname not in _pending:  # the common case: one dict lookup
            return None
        meta_path = sys.meta_path
        try:
            later = meta_path[meta_path.index(self) + 1 :]
        except ValueError:
            return None
        for finder in later:
            find_spec = getattr(finder, "find_spec", None)
            if find_spec is None:
                continue
            spec = find_spec(fullname, path, target)
            if spec is None:
                continue
            loader = spec.loader
            if loader is not None and hasattr(loader, "exec_module") and not isinstance(loader, _NotifyingLoader):
                spec.loader = _NotifyingLoader(loader)
            return spec
        return None

    def invalidate_caches(self) -> None:
        pass


class _NotifyingLoader:
    """Delegates to the real loader, then runs the module's post-import hooks."""

    def __init__(self, loader) -> None:
        self.loader = loader

    def __getattr__(self, name: str):
        return getattr(self.loader, name)

    def create_module(self, spec):
        create = getattr(self.loader, "create_module", None)
        return create(spec) if create is not None else None

    def exec_module(self, module: ModuleType) -> None:
        loader = self.loader
        spec = getattr(module, "__spec__", None)
        if spec is not None and spec.loader is self:
            spec.loader = loader
        if getattr(module, "__loader__", None) is self:
            try:
                module.__loader__ = loader
            except AttributeError:
                pass
        loader.exec_module(module)
        _notify(module)
