"""Installed distributions: the one way the agent reads package metadata.

Everything goes through the ``importlib_metadata`` package (a declared dependency; the
OpenTelemetry API reads its entry points with it too), imported at the first question:
it costs start-up time, and most processes never ask. The stdlib's ``importlib.metadata``
lacks entry-point selection by group and name on Python 3.9. Nothing here raises: a
missing or broken distribution reads as absent.
"""

from __future__ import annotations

import re

TYPE_CHECKING = False
if TYPE_CHECKING:
    from importlib_metadata import EntryPoint

_SEPARATORS = re.compile(r"[-_.]+")


def normalize(name: str) -> str:
    """A distribution name as the packaging spec compares them (``Foo_Bar`` -> ``foo-bar``)."""
    return _SEPARATORS.sub("-", name).lower()


def version(distribution: str) -> str | None:
    """The installed version of ``distribution``, or None when it is not installed (or unreadable)."""
    try:
        import importlib_metadata

        return importlib_metadata.version(distribution)
    except Exception:  # noqa: BLE001 - PackageNotFoundError, or a broken dist-info
        return None


def entry_points(group: str, name: str) -> list[EntryPoint]:
    """The installed entry points of ``group`` called ``name`` (in the order they are found)."""
    try:
        import importlib_metadata

        return list(importlib_metadata.entry_points(group=group, name=name))
    except Exception:  # noqa: BLE001
        return []


def names() -> list[str]:
    """The names of every installed distribution."""
    try:
        import importlib_metadata

        found = []
        for dist in importlib_metadata.distributions():
            try:
                name = dist.metadata["Name"]
            except Exception:  # noqa: BLE001 - a broken dist-info
                name = None
            if name:
                found.append(name)
        return found
    except Exception:  # noqa: BLE001
        return []


def console_script_owner(script: str) -> str | None:
    """The name of the distribution whose ``console_scripts`` entry point is ``script``,
    or None (not a console script, or its distribution is unreadable)."""
    for entry_point in entry_points("console_scripts", script):
        try:
            dist = entry_point.dist
            name = dist.metadata["Name"] if dist is not None else None
        except Exception:  # noqa: BLE001 - a broken dist-info
            name = None
        if name:
            return name
    return None
