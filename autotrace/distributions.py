"""Installed distributions: the one way the agent reads package metadata.

Everything goes through the ``importlib_metadata`` package (a declared dependency; the
OpenTelemetry API reads its entry points with it too), imported at the first question:
it costs start-up time, and most processes never ask. The one question asked at start-up,
which distribution owns a console script (:func:`console_script_owner`), reads the few
files it needs itself. The stdlib's ``importlib.metadata``
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
    or None (not a console script, or its distribution is unreadable).

    Asked at start-up (a console script's service name), so it reads the few files it
    needs itself rather than importing ``importlib_metadata`` and parsing every
    distribution's metadata (about 30 ms): the ``entry_points.txt`` of each distribution
    on ``sys.path``, in path order as the import system finds them, then the ``Name`` of
    the first that declares ``script``.
    """
    import os
    import sys

    for directory in sys.path:
        try:
            entries = os.scandir(directory or ".")
        except OSError:
            continue
        with entries:
            for entry in entries:
                if entry.name.endswith((".dist-info", ".egg-info")) and _declares(entry.path, script):
                    return _metadata_name(entry.path) or entry.name.partition("-")[0]
    return None


def _declares(info_dir: str, script: str) -> bool:
    """Whether a distribution's ``entry_points.txt`` has ``script`` in ``[console_scripts]``."""
    import os

    try:
        with open(os.path.join(info_dir, "entry_points.txt"), encoding="utf-8") as file:
            section = ""
            for line in file:
                line = line.strip()
                if line.startswith("["):
                    section = line.strip("[]").strip()
                elif section == "console_scripts" and line.partition("=")[0].strip() == script:
                    return True
    except (OSError, UnicodeDecodeError):
        pass
    return False


def _metadata_name(info_dir: str) -> str | None:
    """The ``Name`` header of a distribution's METADATA (PKG-INFO for an .egg-info)."""
    import os

    filename = "METADATA" if info_dir.endswith(".dist-info") else "PKG-INFO"
    try:
        with open(os.path.join(info_dir, filename), encoding="utf-8") as file:
            for line in file:
                if not line.strip():
                    break  # the headers end at the first blank line
                if line.lower().startswith("name:"):
                    return line[5:].strip() or None
    except (OSError, UnicodeDecodeError):
        pass
    return None
