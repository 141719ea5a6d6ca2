"""Replacing a library's function by a wrapper: once, reversibly, looking like the original.

Hooks use this rather than wrapt's proxies: importing wrapt costs tens of milliseconds
at start-up, and a plain function wrapper is enough where a hook replaces a function
or a method on a class.
"""

from __future__ import annotations

import functools

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, Callable

ORIGINAL = "__autotrace_original__"


def wrap_function(owner: Any, name: str, make_wrapper: Callable[[Callable], Callable]) -> bool:
    """Replace ``owner.name`` by ``make_wrapper(original)``; False if it was wrapped already.

    ``owner`` is a module or a class. For a class, the attribute is looked up on the
    class itself (not inherited), so a subclass is patched only where it defines its own.
    The wrapper gets the original's name, docstring and ``__wrapped__``.
    """
    original = owner.__dict__[name] if isinstance(owner, type) else getattr(owner, name)
    if getattr(original, ORIGINAL, None) is not None:
        return False
    wrapper = make_wrapper(original)
    functools.update_wrapper(wrapper, original)
    setattr(wrapper, ORIGINAL, original)
    setattr(owner, name, wrapper)
    return True


def unwrap_function(owner: Any, name: str) -> None:
    """Put the original back (for tests)."""
    current = owner.__dict__.get(name) if isinstance(owner, type) else getattr(owner, name, None)
    original = getattr(current, ORIGINAL, None)
    if original is not None:
        setattr(owner, name, original)
