"""The installed package's version: the one definition every layer records in its artifacts."""

from __future__ import annotations

from functools import lru_cache


@lru_cache(maxsize=1)
def package_version() -> str:
    """``bss2-farm``'s installed version, or ``0+unknown`` when running from a bare source tree."""
    try:
        from importlib.metadata import version

        return version("bss2-farm")
    except Exception:  # not installed (running from a source tree)
        return "0+unknown"
