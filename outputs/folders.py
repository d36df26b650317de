"""Where the programs write, checked before any work starts: no output may replace an input or
another output of the same command, an existing file is replaced only with --overwrite, a used run
folder only with --resume or --overwrite, only what a run wrote (its manifest, outputs.manifest) is
ever replaced, and a folder being written is held by one process."""

import fcntl
import json
import logging
import os
import re
import shutil
import socket
import time

from errors import ConfigError
from . import manifest

logger = logging.getLogger("dimmatch")

# what train.py writes into --output_dir (and --overwrite replaces)
RUN_FILES = ("checkpoint_last.pth", "best_metrics.json", "config.json", "train.log", "metrics.jsonl")
EARLIER_RUN_FILES = ("model_best.pth",)   # written by earlier versions (now the model_best/ folder)
RUN_FOLDERS = ("tensorboard", "model_best")   # model_best: a model folder (model_best.pth: earlier versions)
MODEL_FOLDERS = ("model_best",)                # written whole by the run: set aside whole by --overwrite
PROGRAM = "train.py"           # the writer of a run folder, in its manifest
LOCK = ".lock"
PREVIOUS = ".previous-run"     # an --overwrite'n run, kept until the new one's first checkpoint


def _existing_ancestor(path: str) -> str:
    path = os.path.abspath(path)
    while not os.path.exists(path):
        path = os.path.dirname(path)
    return path


def _check_writable_folder(folder: str, option: str, given: str) -> None:
    existing = _existing_ancestor(folder)
    if not os.path.isdir(existing):
        raise ConfigError(f"{option} {given}: {existing} is a file, not a folder")
    if not os.access(existing, os.W_OK | os.X_OK):
        raise ConfigError(f"{option} {given}: {existing} is not writable")


def _same(path: str) -> str:
    return os.path.realpath(os.path.abspath(path))


class Outputs:
    """The files one command writes and the files it reads, checked against each other at once.

    `file` declares an output (with the side files it comes with, e.g. the .json of a score matrix);
    `reads` declares inputs; `check` refuses an output that is also an input or another output, an
    existing output without --overwrite, and with it one that no command of ours wrote; `claim`
    records the outputs in their folders' manifests just before they are written."""

    def __init__(self, overwrite: bool = False, program: str = ""):
        self.overwrite, self.program = overwrite, program
        self.outputs: dict[str, str] = {}
        self.folders: dict[str, str] = {}
        self.inputs: dict[str, str] = {}

    def reads(self, path: str | None, option: str) -> None:
        """An input: `option` names where it comes from (an option, or what the file is). A score
        matrix's .json record beside it is an input too: without it the matrix cannot be checked."""
        if path:
            self.inputs.setdefault(_same(path), f"{option} {path}")
            if path.endswith(".npy"):
                self.inputs.setdefault(_same(path[:-4] + ".json"), f"the record of {option} {path}")

    def file(self, path: str | None, option: str, suffix: str, side: tuple = (), folder: bool = False) -> None:
        """An output file `path` (ending in `suffix`) and its side files (same stem, `side` suffixes);
        with `folder`, an output folder (written whole, e.g. an index)."""
        if not path:
            return
        if not path.rstrip("/").endswith(suffix):
            raise ConfigError(f"{option} {path} must end in {suffix}")
        path = path.rstrip("/") if folder else path
        if folder:
            self.folders[_same(path)] = f"{option} {path}"
        if os.path.isdir(path) != folder and os.path.exists(path):
            kind = "a folder; give a file name" if not folder else "a file; give a folder name"
            raise ConfigError(f"{option} {path} is {kind} ending in {suffix}")
        _check_writable_folder(os.path.dirname(os.path.abspath(path)), option, path)
        stem = path[: -len(suffix)]
        for target in (path, *(stem + extra for extra in side)):
            label = f"{option} {path}" if target == path else f"{target} (written with {option} {path})"
            if _same(target) in self.outputs:
                raise ConfigError(f"{label} is also {self.outputs[_same(target)]}; give them different names")
            self.outputs[_same(target)] = label

    def folder_of(self, folder: str, names: tuple, option: str = "--out") -> None:
        """The files a command writes into one output folder (a report)."""
        if os.path.isfile(folder):
            raise ConfigError(f"{option} {folder} is a file; give a folder")
        for name in names:
            self.file(os.path.join(folder, name), option, os.path.splitext(name)[1])

    def check(self, ownership: bool = True) -> None:
        """Without `ownership`, an existing output's writer is not asked yet (a first check, before
        every input is declared: an output that is an input must be refused as that)."""
        for target, label in self.outputs.items():
            if target in self.inputs:
                raise ConfigError(f"{label} is an input ({self.inputs[target]}); write it elsewhere")
            folder = os.path.dirname(target)
            if os.path.basename(target) in RUN_FILES + EARLIER_RUN_FILES and \
                    os.path.isfile(os.path.join(folder, "config.json")):
                raise ConfigError(f"{label} would replace a file of the training run in {folder}; write it "
                                  "elsewhere")
            if os.path.exists(target) and not self.overwrite:
                raise ConfigError(f"{label} exists already; give --overwrite to replace it, or another name")
            if ownership and os.path.isfile(target) and manifest.recorded_writer(target) is None:
                raise ConfigError(f"{label} exists and no command of ours wrote it (no "
                                  f"{os.path.join(folder, manifest.MANIFEST)} records it); --overwrite replaces only "
                                  "our own outputs: move it away, or give another name")
        for folder, label in self.folders.items():     # written whole: nothing read may lie inside
            for source, source_label in self.inputs.items():
                if source.startswith(folder + os.sep) and os.path.exists(source):
                    raise ConfigError(f"{source_label} lies inside {label}, which this command writes whole; "
                                      "move it out first, or write elsewhere")

    def claim(self) -> None:
        """Record the output files (not the folders written whole, which hold their own manifest)
        as this program's, in the manifest of each one's folder, before any is written."""
        by_folder: dict[str, list[str]] = {}
        for target in self.outputs:
            if target not in self.folders:
                by_folder.setdefault(os.path.dirname(target), []).append(os.path.basename(target))
        for folder, names in by_folder.items():
            manifest.claim(folder, self.program, names)


def check_output_dir(output_dir: str, continued: bool, overwrite: bool, inputs: dict | None = None) -> None:
    """A run folder of ours is continued only with --resume, replaced only with --overwrite, and
    never while it holds an input of the run (`inputs`: option -> path) that --overwrite would
    remove; a file under a name a run writes that no run of ours wrote is never replaced."""
    if os.path.isfile(output_dir):
        raise ConfigError(f"--output_dir {output_dir} is a file; give a folder for the run")
    _check_writable_folder(output_dir, "--output_dir", output_dir)
    mine = run_entries(output_dir)
    if holds_run(output_dir, mine) and not continued and not overwrite:
        raise ConfigError(f"--output_dir {output_dir} already holds a run; continue it with --resume auto, "
                          "replace it with --overwrite, or choose another folder")
    others = manifest.foreign(output_dir, RUN_FILES + RUN_FOLDERS, mine)
    if others:
        them = "them" if len(others) > 1 else "it"
        raise ConfigError(f"--output_dir {output_dir} holds {', '.join(others)}, which no run of train.py wrote "
                          f"(no {manifest.MANIFEST} records {them}), and a run would replace {them}; choose another "
                          "folder")
    if overwrite:
        replaced = {_same(os.path.join(output_dir, name)) for name in mine}
        for option, path in (inputs or {}).items():
            if path and _same(path) in replaced:
                raise ConfigError(f"{option} {path} is a file of the run in --output_dir {output_dir}, which "
                                  "--overwrite replaces; copy it elsewhere first, or choose another folder")


def run_entries(output_dir: str) -> set[str]:
    """What runs of train.py wrote into `output_dir` (relative paths): its manifest's entries. A run
    from before the manifests is recognised by its config.json, a training config of ours."""
    if not os.path.isdir(output_dir):
        return set()
    if os.path.exists(os.path.join(output_dir, manifest.MANIFEST)):
        entries = manifest.owned(output_dir, PROGRAM)
        if os.path.isdir(os.path.join(output_dir, "model_best")):
            # a run that writes the model_best/ folder never wrote model_best.pth, which the manifests of
            # some of those versions claimed all the same: a file of that name is the user's
            entries -= set(EARLIER_RUN_FILES)
        return entries
    try:
        with open(os.path.join(output_dir, "config.json"), encoding="utf-8") as handle:
            saved = json.load(handle)
    except (OSError, ValueError):
        return set()
    if not isinstance(saved, dict) or not {"encoders", "sim_head", "output_dir"} <= set(saved):
        return set()
    entries = {name for name in RUN_FILES + EARLIER_RUN_FILES if os.path.isfile(os.path.join(output_dir, name))}
    if os.path.isdir(os.path.join(output_dir, "tensorboard")):
        entries |= {"tensorboard"} | {name for name in manifest.foreign_inside(output_dir, "tensorboard", set())
                                      if os.path.basename(name).startswith("events.out.tfevents.")}
    return entries


def holds_run(output_dir: str, entries: set[str] | None = None) -> bool:
    """Whether a run of ours has written anything into `output_dir` (a claim alone is not a run)."""
    entries = run_entries(output_dir) if entries is None else entries
    return any(os.path.isfile(os.path.join(output_dir, name)) for name in entries)


def claim_run(output_dir: str) -> None:
    """Record the run's files in the folder's manifest before writing them."""
    manifest.claim(output_dir, PROGRAM, RUN_FILES + RUN_FOLDERS)


def remove_partial_files(output_dir: str) -> None:
    """The half-written temporary files of run files (NAME.tmp-PID) that a killed process left;
    called by the process that holds the folder, so that no writer owns them any more."""
    pattern = re.compile("^(" + "|".join(map(re.escape, RUN_FILES)) + r")\.tmp-\d+$")
    for name in os.listdir(output_dir):
        if pattern.match(name) and os.path.isfile(os.path.join(output_dir, name)):
            os.remove(os.path.join(output_dir, name))
            logger.info("%s: removed %s, left half-written by a process that was killed", output_dir, name)


def set_aside_previous_run(output_dir: str) -> str | None:
    """--overwrite (and a restarted run): move what an earlier run wrote there (its manifest's
    files, nothing else) into OUTPUT_DIR/.previous-run, to be discarded at the new run's first
    checkpoint or restored if it fails before. A .previous-run left by an interrupted --overwrite
    is the older run: it is kept, and the interrupted attempt's files are removed."""
    aside = os.path.join(output_dir, PREVIOUS)
    keep = not os.path.isdir(aside)
    # files, and the model folders written whole (model_best/); tensorboard/ holds others' files too
    names = sorted(name for name in run_entries(output_dir) if os.path.isfile(os.path.join(output_dir, name))
                   or name in MODEL_FOLDERS and os.path.isdir(os.path.join(output_dir, name)))
    if keep and names and os.path.isfile(os.path.join(output_dir, manifest.MANIFEST)):
        # a copy: the new run adds its files to the manifest, a restored run gets its own back
        os.makedirs(aside)
        shutil.copy2(os.path.join(output_dir, manifest.MANIFEST), os.path.join(aside, manifest.MANIFEST))
    for name in names:
        path = os.path.join(output_dir, name)
        if keep:
            os.makedirs(os.path.dirname(os.path.join(aside, name)), exist_ok=True)
            os.replace(path, os.path.join(aside, name))
        elif os.path.isdir(path):
            shutil.rmtree(path)
        else:
            os.remove(path)
    if os.path.isdir(aside):
        logger.info("%s: the previous run is kept in %s until this run writes its first checkpoint", output_dir,
                    aside)
        return aside
    return None


def restore_previous_run(output_dir: str, aside: str) -> None:
    """A run that failed before its first checkpoint gives the folder back to the run it replaced."""
    for name in run_entries(output_dir):
        if os.path.isfile(os.path.join(output_dir, name)):
            os.remove(os.path.join(output_dir, name))
    for where, _, files in os.walk(aside):
        for file in files:
            name = os.path.relpath(os.path.join(where, file), aside)
            os.makedirs(os.path.dirname(os.path.join(output_dir, name)), exist_ok=True)
            os.replace(os.path.join(where, file), os.path.join(output_dir, name))
    shutil.rmtree(aside)


def discard_previous_run(aside: str | None) -> None:
    if aside is not None:
        shutil.rmtree(aside, ignore_errors=True)


def alive(pid: int) -> bool:
    """Whether process `pid` (of this host) still runs."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


class FolderLock:
    """One process at a time writes a folder: an exclusive `flock` on FOLDER/.lock, which the kernel
    releases when the process ends however it ends, so a killed run leaves no stuck lock (the file
    stays, naming its last holder, and the next run takes it over with a message)."""

    def __init__(self, folder: str, option: str):
        self.folder, self.option = folder, option
        self.handle = None
        self.created_folders = []       # the folder and the parents acquire made, deepest first
        self.created_file = False

    def acquire(self) -> "FolderLock":
        missing, folder = [], os.path.abspath(self.folder)
        while not os.path.isdir(folder) and folder != os.path.dirname(folder):
            missing.append(folder)
            folder = os.path.dirname(folder)
        created = bool(missing)
        os.makedirs(self.folder, exist_ok=True)
        self.created_folders = missing
        self.created_file = not os.path.exists(os.path.join(self.folder, LOCK))
        handle = open(os.path.join(self.folder, LOCK), "a+", encoding="utf-8")
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            handle.seek(0)
            holder = handle.read().strip() or "another process"
            handle.close()
            if created:
                shutil.rmtree(self.folder, ignore_errors=True)
                self._remove_created_parents()
            raise ConfigError(f"{self.option} {self.folder} is being written by {holder}; wait for it to end or "
                              "stop it, or choose another folder") from None
        handle.seek(0)
        previous = handle.read().split()
        if previous and previous[0].startswith("pid=") and f"host={socket.gethostname()}" in previous:
            pid = int(previous[0][4:])
            if pid != os.getpid() and not alive(pid):
                logger.warning("%s %s: taking over the lock of process %d, which has ended", self.option,
                               self.folder, pid)
        handle.seek(0)
        handle.truncate()
        handle.write(f"pid={os.getpid()} host={socket.gethostname()} since={time.strftime('%Y-%m-%dT%H:%M:%S')}\n")
        handle.flush()
        self.handle = handle
        return self

    def release(self, undo: bool = False) -> None:
        """Let the folder go: the lock file is emptied (an ended run leaves no holder named), and
        with `undo` (a start that failed) what acquire created is removed again."""
        if self.handle is None:
            return
        self.handle.seek(0)
        self.handle.truncate()
        self.handle.close()     # closing the file releases the flock
        self.handle = None
        if undo and self.created_file:
            os.remove(os.path.join(self.folder, LOCK))
            self._remove_created_parents()

    def _remove_created_parents(self) -> None:
        """The folders acquire made (--output_dir out/sub/run made out/ and out/sub/ too), each if
        it is still empty, deepest first: a start that failed leaves nothing behind."""
        for folder in self.created_folders:
            try:
                os.rmdir(folder)
            except OSError:         # not empty (something else wrote there since), or gone
                return
