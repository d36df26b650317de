"""What our programs wrote into a folder, so that they delete or replace only that.

Every writer (train.py's run folder, the demo and its data, tools/make_demo_data.py, the index,
report and sweep folders) records in FOLDER/.dimmatch-manifest.json each entry it creates (a
relative path, with the program that wrote it) before creating it, and checks an entry is recorded
there before removing or replacing it. A file a user or another tool put in the folder is never
recorded, so it is never touched; a folder holding such a file under a name the program would write
is refused in one line.
"""

import json
import os
import shutil

from errors import ConfigError

MANIFEST = ".dimmatch-manifest.json"


def read(folder: str) -> dict[str, str]:
    """{relative path: program} of what our programs wrote into `folder` ({} without a manifest)."""
    path = os.path.join(folder, MANIFEST)
    if not os.path.isfile(path):
        return {}
    try:
        with open(path, encoding="utf-8") as handle:
            entries = json.load(handle)["files"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ConfigError(f"{path} is not a readable manifest ({exc}); it lists what our programs wrote into "
                          f"{folder}: restore it, or delete it (our commands then take nothing there for "
                          "theirs)") from exc
    if not isinstance(entries, dict):
        raise ConfigError(f"{path} is not a readable manifest (its 'files' is not an object); restore it, or "
                          "delete it (our commands then take nothing there for theirs)")
    return entries


def claim(folder: str, program: str, names) -> None:
    """Record `names` (relative paths) as written by `program`, before they are written: a process
    killed in between leaves a claim on a name that does not exist, never a file without its claim.
    A name already recorded keeps its first writer."""
    entries = read(folder)
    new = {name: program for name in names if name not in entries}
    if not new:
        return
    os.makedirs(folder, exist_ok=True)
    path = os.path.join(folder, MANIFEST)
    tmp = f"{path}.tmp-{os.getpid()}"
    with open(tmp, "w", encoding="utf-8") as handle:
        json.dump({"files": {**entries, **new}}, handle, indent=1, sort_keys=True)
    os.replace(tmp, path)


def owned(folder: str, program: str | None = None) -> set[str]:
    """The entries recorded for `program` (any of ours with None)."""
    return {name for name, writer in read(folder).items() if program is None or writer == program}


def recorded_writer(path: str) -> str | None:
    """The program of ours that wrote file `path`, by the manifest of its folder or of a folder above
    it (the demo and make_demo_data record the data sets they write from their top folder)."""
    folder, relative = os.path.dirname(os.path.abspath(path)), os.path.basename(path)
    while True:
        writer = read(folder).get(relative)
        if writer is not None:
            return writer
        parent = os.path.dirname(folder)
        if parent == folder:
            return None
        folder, relative = parent, os.path.join(os.path.basename(folder), relative)


def foreign(folder: str, names, mine: set[str]) -> list[str]:
    """Those of `names` (relative paths) that exist in `folder` without being in `mine`; a folder
    among them counts as foreign when it is not in `mine` itself (anything inside it may then be
    someone else's)."""
    return [name for name in names if os.path.lexists(os.path.join(folder, name)) and name not in mine]


def foreign_inside(folder: str, name: str, mine: set[str]) -> list[str]:
    """The files inside the sub-folder `name` that are not in `mine` (relative to `folder`)."""
    found = []
    root = os.path.join(folder, name)
    for where, _, files in os.walk(root):
        for file in files:
            relative = os.path.relpath(os.path.join(where, file), folder)
            if relative not in mine:
                found.append(relative)
    return sorted(found)


def make_way(folder: str, program: str, parts: tuple, overwrite: bool, option: str) -> None:
    """Before `program` writes the sub-folders `parts` of `folder` whole: one that no command of
    ours wrote is refused (even with `overwrite`), one of ours is removed with `overwrite` and
    refused without; then the parts are claimed."""
    mine = owned(folder)
    others = foreign(folder, parts, mine)
    if others:
        them = "them" if len(others) > 1 else "it"
        raise ConfigError(f"{option} {folder} holds {', '.join(others)}, which no command of ours wrote (no "
                          f"{MANIFEST} records {them}); {program} never replaces {them}: choose another folder")
    present = [part for part in parts if os.path.lexists(os.path.join(folder, part))]
    for part in present:         # a file the user put inside a part since is never removed with it
        inside = foreign_inside(folder, part, mine) if os.path.isdir(os.path.join(folder, part)) else []
        if inside:
            raise ConfigError(f"{option} {folder}: {inside[0]}{f' (and {len(inside) - 1} more)' if len(inside) > 1 else ''}"
                              f" is not a file {program} or the demo wrote; move it out of {part} first, or choose "
                              "another folder")
    if present and not overwrite:
        raise ConfigError(f"{folder} already holds {', '.join(present)}; give --overwrite to replace "
                          f"{'them' if len(present) > 1 else 'it'}, or another folder")
    for part in present:
        path = os.path.join(folder, part)
        shutil.rmtree(path) if os.path.isdir(path) and not os.path.islink(path) else os.remove(path)
    claim(folder, program, parts)


def claim_contents(folder: str, program: str, parts) -> None:
    """Record every file now inside the sub-folders `parts` (just written whole by `program`), so
    that a later make_way can tell them from files added by someone else."""
    claim(folder, program, [relative for part in parts for relative in foreign_inside(folder, part, set())])
