"""Where a store lives, and what already lies there: the farm only ever writes into its own stores.

``--out`` may name a new path, an empty folder, a bss2-farm store, or a store whose creation was
interrupted. The last is recognised by a marker object that creation writes *first* into the new
or empty location (so everything beside it was made by the farm) and removes *last*. Anything
else (someone's files, another tool's Zarr group, a Zarr v2 store, the working directory) is
refused with one line, before anything in it is touched. Works for local paths and any fsspec URL.
"""

from __future__ import annotations

import json
import os
from enum import Enum
from pathlib import Path
from typing import Any

import fsspec

from farm.errors import FarmInputError

#: Written into a new or empty location before anything else; its presence means "half-created".
CREATING_MARKER = ".bss2-farm-creating"
_ZARR_V2_KEYS = (".zgroup", ".zarray", ".zattrs", ".zmetadata")


class StoreRefused(FarmInputError):
    """``--out`` holds something the farm did not make; nothing in it was touched."""


class PathState(Enum):
    NEW = "new"  # nothing there
    EMPTY = "empty"  # an empty folder / prefix
    CREATING = "creating"  # a store whose creation was interrupted (marker present)
    STORE = "store"  # a complete bss2-farm store


def is_remote(url: str) -> bool:
    return "://" in url and not url.startswith("file://")


def filesystem(url: str) -> tuple[fsspec.AbstractFileSystem, str]:
    """The fsspec filesystem and in-filesystem path of ``url`` (local paths become absolute)."""
    return fsspec.core.url_to_fs(url)


def classify(url: str) -> PathState:
    """What lies at ``url``.

    Raises ``StoreRefused`` (one line: the path and why) for anything foreign.
    """
    _refuse_working_directory(url)
    fs, path = filesystem(url)
    if not fs.exists(path):
        return PathState.NEW
    if fs.isfile(path):
        raise StoreRefused(f"out={url!r} is a file, not a store; choose a new path for --out")
    names = {p.rstrip("/").rsplit("/", 1)[-1] for p in fs.ls(path, detail=False)}
    if not names:
        return PathState.EMPTY
    if CREATING_MARKER in names:
        return PathState.CREATING
    if "zarr.json" in names:
        meta = _read_json(fs, f"{path}/zarr.json")
        attrs = meta.get("attributes") or {}
        if (
            meta.get("zarr_format") == 3
            and meta.get("node_type") == "group"
            and attrs.get("format_version") is not None
            and str(attrs.get("created_by", "")).startswith("bss2-farm")
        ):
            return PathState.STORE
        what = (
            "a Zarr v3 group not made by bss2-farm"
            if meta.get("node_type") == "group"
            else "a Zarr v3 array or unreadable zarr.json"
        )
        raise StoreRefused(
            f"out={url!r} holds {what}; nothing was touched, choose a new path for --out"
        )
    if names & set(_ZARR_V2_KEYS):
        raise StoreRefused(
            f"out={url!r} holds a Zarr v2 store (bss2-farm writes Zarr v3); "
            "nothing was touched, choose a new path for --out"
        )
    example = sorted(names)[0]
    raise StoreRefused(
        f"out={url!r} is a folder with {len(names)} entries that are not a bss2-farm store "
        f"(e.g. {example!r}); nothing was touched, choose a new or empty path for --out"
    )


def begin_creation(url: str, state: PathState) -> None:
    """Write the marker first (new or empty location), or clear a half-created store down to it.

    Why clear by hand: ``zarr.open_group(mode="w")`` would delete the marker too, and a kill right
    then would leave a folder no later run may touch.
    """
    fs, path = filesystem(url)
    marker = f"{path}/{CREATING_MARKER}"
    if state is PathState.CREATING:
        for child in fs.ls(path, detail=False):
            if child.rstrip("/").rsplit("/", 1)[-1] != CREATING_MARKER:
                fs.rm(child, recursive=True)
        return
    if state not in (PathState.NEW, PathState.EMPTY):
        raise AssertionError(f"begin_creation on a {state.value} location")
    if not is_remote(url):
        fs.makedirs(path, exist_ok=True)
    fs.pipe(
        marker, b"bss2-farm: store creation in progress; a run of the same command recreates it\n"
    )


def end_creation(url: str) -> None:
    """Remove the marker: the store is complete (its attributes and metadata are published)."""
    fs, path = filesystem(url)
    fs.rm(f"{path}/{CREATING_MARKER}")


def check_parent_writable(url: str) -> None:
    """Fail early, with the path, when a new local --out cannot be created."""
    if is_remote(url):
        return
    parent = Path(url.removeprefix("file://")).absolute().parent
    while not parent.exists():
        parent = parent.parent
    if not os.access(parent, os.W_OK):
        raise StoreRefused(
            f"out={url!r}: directory {str(parent)!r} is not writable; choose another --out"
        )


def lock_url(url: str) -> str:
    """The lock object beside the store (``<out>.lock``): it exists before the store does."""
    return url.rstrip("/") + ".lock"


def _read_json(fs: fsspec.AbstractFileSystem, path: str) -> dict[str, Any]:
    try:
        value = json.loads(fs.cat_file(path))
    except (ValueError, OSError):
        return {}
    return value if isinstance(value, dict) else {}


def _refuse_working_directory(url: str) -> None:
    """``--out .`` (or the home folder, or a folder above the working folder) is never a store."""
    if is_remote(url):
        return
    target = Path(url.removeprefix("file://")).expanduser().resolve()
    cwd = Path(os.getcwd()).resolve()
    if target == cwd or target in cwd.parents or target == Path.home().resolve():
        raise StoreRefused(
            f"out={url!r} is the working directory, the home folder or above them; "
            "name a store path such as runs/sims.zarr"
        )
