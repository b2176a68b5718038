"""Nothing lost on refusal: a single run checks its config before Hydra writes anything, and a refusal found
later puts the run folder back exactly as it was.

Hydra creates the run folder, opens `<job>.log` and writes `.hydra/` before the task function runs, so a check
inside the task is too late. `FolderGuard.on_run_start` runs first: it refuses a bad config or a folder held by a
live run with nothing written, and otherwise creates the folder itself (so it knows which folders it made) and
remembers the bytes of every file Hydra is about to touch. A refusal found later (a missing dataset, a damaged
checkpoint, a checkpoint of another run) calls `put_back()`, which removes what this process created and restores
what it changed.
"""
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Optional

from hydra.experimental.callback import Callback

from rpe_bench import distributed
from rpe_bench.config import ConfigError, validate
from rpe_bench.run_folder import LOCK_NAME, RunFolderRefused, refuse_if_live


@dataclass
class FolderSnapshot:
    """What a run folder held before this process touched it."""
    folder: Path
    created_folders: list[Path] = field(default_factory=list)  # outermost first
    existing_paths: set[Path] = field(default_factory=set)
    # The bytes of the files every start rewrites or appends to: .hydra/*.yaml and the job log (Hydra), the lock
    # file (its holder's process id).
    file_bytes: dict[Path, bytes] = field(default_factory=dict)

    @classmethod
    def take(cls, folder: Path) -> "FolderSnapshot":
        snapshot = cls(folder, created_folders=make_folders(folder))
        for path in folder.rglob("*"):
            snapshot.existing_paths.add(path)
            rewritten = path.parent.name == ".hydra" or (path.parent == folder and (
                path.suffix == ".log" or path.name == LOCK_NAME))
            if rewritten and path.is_file() and not path.is_symlink():
                snapshot.file_bytes[path] = path.read_bytes()
        return snapshot

    def put_back(self) -> None:
        """Removes every path this process created (deepest first) and restores the files it changed."""
        close_file_logs_under(self.folder)
        if self.folder.is_dir():
            for path in sorted(self.folder.rglob("*"), key=lambda item: len(item.parts), reverse=True):
                if path not in self.existing_paths:
                    remove(path)
        for path, content in self.file_bytes.items():
            if not path.is_file() or path.read_bytes() != content:
                path.write_bytes(content)
        for folder in reversed(self.created_folders):
            try:
                folder.rmdir()
            except OSError:  # another run has put something there since: it is theirs now
                pass


def make_folders(folder: Path, attempts: int = 5) -> list[Path]:
    """Creates `folder` and its missing parents one by one: the ones returned are those this process made.
    A sibling run that refuses may remove a parent it made between our steps; then the chain is made again."""
    created = []
    for _ in range(attempts):
        missing = [parent for parent in [*reversed(folder.parents), folder] if not parent.exists()]
        try:
            for path in missing:
                try:
                    path.mkdir()
                    created.append(path)
                except FileExistsError:
                    pass
            return created
        except FileNotFoundError:  # a parent vanished under us
            created = [path for path in created if path.exists()]
    raise OSError(f"could not create {folder}: its parent folders keep disappearing")


def remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        try:
            path.rmdir()
        except OSError:
            pass
    else:
        path.unlink(missing_ok=True)


def close_file_logs_under(folder: Path) -> None:
    """Hydra's file handler keeps the job log open; close it so no line lands after the log is restored."""
    for logger in [logging.getLogger(), *logging.Logger.manager.loggerDict.values()]:
        for handler in list(getattr(logger, "handlers", [])):
            if isinstance(handler, logging.FileHandler) and Path(handler.baseFilename).is_relative_to(folder):
                handler.close()
                logger.removeHandler(handler)


_snapshot: Optional[FolderSnapshot] = None


def put_back() -> None:
    """Undoes this process's writes to the single run's folder, if a snapshot was taken."""
    if _snapshot is not None:
        _snapshot.put_back()


def refuse(message: str) -> None:
    print(f"error: {message}", file=sys.stderr)
    sys.exit(2)


class FolderGuard(Callback):
    """Registered in conf/config.yaml. Only single runs: a sweep job records its refusal in results.json."""

    def on_run_start(self, config, **kwargs) -> None:
        global _snapshot
        _snapshot = None  # a refusal must never put back another run's folder
        if not distributed.from_environment().is_main:  # the other ranks write nothing anyway
            return
        try:
            validate(config)
            distributed.pick_device(config.trainer.device.value)
        except ConfigError as error:
            refuse(str(error))
        folder = Path(config.hydra.run.dir).absolute()
        try:
            refuse_if_live(folder)
        except RunFolderRefused as error:
            refuse(str(error))
        _snapshot = FolderSnapshot.take(folder)
