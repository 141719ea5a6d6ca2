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

# Every (owner, name) replaced, in order: tests put the originals back with undo().
history: list[tuple[Any, str]] = []


def wrap_function(owner: Any, name: str, make_wrapper: Callable[[Callable], Callable]) -> bool:
    """Replace ``owner.name`` by ``make_wrapper(original)``; False if it was wrapped already.

    ``owner`` is a module or a class. For a class, the attribute is looked up on the
    class itself (not inherited), so a subclass is patched only where it defines its own.
    The wrapper gets the original's name, docstring and ``__wrapped__``.
    """
    if isinstance(owner, type):
        if name not in owner.__dict__:
            return False  # inherited: patch the class that defines it
        original = owner.__dict__[name]
    else:
        original = getattr(owner, name)
    descriptor = type(original) if isinstance(original, (staticmethod, classmethod)) else None
    function = original.__func__ if descriptor is not None else original
    if getattr(function, ORIGINAL, None) is not None:
        return False
    wrapper = make_wrapper(function)
    functools.update_wrapper(wrapper, function)
    setattr(wrapper, ORIGINAL, original)
    setattr(owner, name, descriptor(wrapper) if descriptor is not None else wrapper)
    history.append((owner, name))
    return True


def unwrapped(function: Callable) -> Callable:
    """The function a wrapper of :func:`wrap_function` replaced; ``function`` itself if it is no wrapper.

    For the agent's own use of a library it instruments (the viewer's store and sqlite3).
    """
    return getattr(function, ORIGINAL, function)


def unwrap_function(owner: Any, name: str) -> None:
    """Put the original back (for tests)."""
    current = owner.__dict__.get(name) if isinstance(owner, type) else getattr(owner, name, None)
    if isinstance(current, (staticmethod, classmethod)):
        current = current.__func__
    original = getattr(current, ORIGINAL, None)
    if original is not None:
        setattr(owner, name, original)


def undo(mark: int = 0) -> None:
    """Put back every original replaced since ``len(history)`` was ``mark`` (for tests)."""
    while len(history) > mark:
        owner, name = history.pop()
        unwrap_function(owner, name)
