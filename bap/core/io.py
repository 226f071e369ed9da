"""Atomic, fsync'ed artifact I/O; safe weight loading; run-directory locks.

Every artifact bap writes goes through :func:`atomic_write_bytes` (temp file in the same directory,
fsync, rename) or :func:`publish_dir` (build a whole directory aside, then swap it in), so an interrupted
command leaves the previous good state intact and never a half-written file.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import json
import logging
import os
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from bap.errors import IncompatibleArtifactError, RunLockedError

__all__ = [
    "RunLock",
    "atomic_write_bytes",
    "atomic_write_json",
    "atomic_write_text",
    "file_sha256",
    "load_json",
    "load_state_dict",
    "publish_dir",
    "save_state_dict",
    "staging_dir",
]

log = logging.getLogger(__name__)


def _fsync_dir(path: Path) -> None:
    # a rename is only durable once the directory entry is flushed
    with contextlib.suppress(OSError):
        fd = os.open(path, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write ``data`` to ``path`` through a temp file in the same directory, fsync, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        os.fchmod(fd, 0o666 & ~_umask())  # mkstemp makes 0600; artifacts get the usual permissions
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    _fsync_dir(path.parent)
    return path


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Atomically write UTF-8 text."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    """Atomically write ``obj`` as indented JSON (NaN is refused: artifacts must be valid JSON)."""
    return atomic_write_text(path, json.dumps(obj, indent=2, allow_nan=False, sort_keys=False) + "\n")


def load_json(path: str | os.PathLike, what: str) -> Any:
    """Read a JSON artifact, turning absence or corruption into a one-line :class:`IncompatibleArtifactError`."""
    path = Path(path)
    if not path.is_file():
        raise IncompatibleArtifactError(f"{what} not found: {path}", "check the path")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise IncompatibleArtifactError(f"{what} {path} is not valid JSON ({e})", "re-create it") from None


def file_sha256(path: str | os.PathLike, chunk: int = 1 << 20) -> str:
    """Hex SHA-256 of a file."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def _remove_stale_siblings(final: Path) -> None:
    """Remove staging / swap directories left next to ``final`` by processes that were killed."""
    for d in final.parent.glob(f".{final.name}.*"):
        parts = d.name[len(final.name) + 2 :].split(".")
        if len(parts) >= 2 and parts[0] in ("staging", "old") and parts[1].isdigit():
            pid = int(parts[1])
            if pid != os.getpid() and not _pid_alive(pid):
                if parts[0] == "old" and not final.exists():
                    os.replace(d, final)  # killed between the two renames of publish_dir: restore the old one
                    log.warning("restored %s from an interrupted publish", final)
                else:
                    shutil.rmtree(d, ignore_errors=True)


@contextlib.contextmanager
def staging_dir(final: str | os.PathLike) -> Iterator[Path]:
    """Yield an empty sibling directory of ``final`` to build artifacts in; removed if the block fails.

    Leftovers of killed processes (staging directories, a half-swapped publish) are cleaned up first.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_siblings(final)
    tmp = Path(tempfile.mkdtemp(prefix=f".{final.name}.staging.{os.getpid()}.", dir=final.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    try:
        yield tmp
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def publish_dir(staged: Path, final: str | os.PathLike) -> Path:
    """Swap a fully built ``staged`` directory in as ``final``; an older ``final`` is replaced atomically.

    The old directory is moved aside first and removed only after the new one is in place, so at
    every instant ``final`` is either the complete old or the complete new artifact set.
    """
    final = Path(final)
    for f in staged.rglob("*"):
        if f.is_file():
            with open(f, "rb") as fh:
                os.fsync(fh.fileno())
    old = None
    if final.exists():
        old = final.with_name(f".{final.name}.old.{os.getpid()}.{int(time.time())}")  # parsed by _remove_stale_siblings
        os.replace(final, old)
    os.replace(staged, final)
    _fsync_dir(final.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return final


def save_state_dict(path: str | os.PathLike, tensors: Mapping[str, Any], metadata: Mapping[str, str] | None = None):
    """Atomically save a flat ``{name: tensor}`` dict as safetensors (no pickle anywhere)."""
    from safetensors.torch import save

    data = save({k: v.detach().contiguous().cpu() for k, v in tensors.items()}, metadata=dict(metadata or {}))
    return atomic_write_bytes(path, data)


def load_state_dict(path: str | os.PathLike, what: str = "weights") -> dict[str, Any]:
    """Load tensors from safetensors, or from a torch file with ``weights_only=True`` (never arbitrary pickle).

    Raises:
        IncompatibleArtifactError: missing file, corrupt file, or a checkpoint that needs unpickling of
            arbitrary objects (refused without running any of its code).
    """
    import pickle

    import torch

    path = Path(path)
    if not path.is_file():
        raise IncompatibleArtifactError(f"{what} file not found: {path}", "pass an existing file")
    with open(path, "rb") as fh:
        head = fh.read(16)
    is_safetensors = path.suffix == ".safetensors" or (len(head) >= 9 and head[8:9] == b"{")
    if is_safetensors:
        from safetensors import SafetensorError
        from safetensors.torch import load_file

        try:
            return dict(load_file(str(path)))
        except (SafetensorError, OSError, ValueError) as e:
            raise IncompatibleArtifactError(
                f"{what} {path} is not a valid safetensors file ({e})", "re-create it"
            ) from None
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        import re

        found = re.search(r"GLOBAL ([\w.]+)", str(e))
        why = f"it would import {found.group(1)}" if found else "it holds objects other than tensors"
        raise IncompatibleArtifactError(
            f"refusing to load {what} {path}: unpickling it needs arbitrary code ({why})",
            "save a plain state_dict (torch.save(model.state_dict(), ...)) or safetensors",
        ) from None
    except (RuntimeError, EOFError, OSError, ValueError, AttributeError) as e:
        raise IncompatibleArtifactError(
            f"{what} {path} is not a readable torch/safetensors file ({e})", "re-create it"
        ) from None
    if isinstance(obj, dict) and "state_dict" in obj and isinstance(obj["state_dict"], dict):
        obj = obj["state_dict"]
    if isinstance(obj, dict) and "model" in obj and isinstance(obj["model"], dict):
        obj = obj["model"]
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise IncompatibleArtifactError(
            f"{what} {path} does not hold a state_dict of tensors", "save model.state_dict()"
        )
    return dict(obj)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except OSError as e:
        return e.errno == errno.EPERM
    return True


class RunLock:
    """An exclusive lock file in a run directory, with stale-lock detection.

    The lock records ``host`` and ``pid``. A lock left behind by a dead process on this host is stale and
    is taken over (with a warning); a live one raises :class:`RunLockedError`.
    """

    def __init__(self, directory: str | os.PathLike, name: str = ".lock"):
        self.path = Path(directory) / name
        self._held = False

    def acquire(self) -> RunLock:
        """Take the lock or raise :class:`RunLockedError`."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        me = {"host": socket.gethostname(), "pid": os.getpid(), "since": time.time()}
        for _ in range(3):
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                try:
                    other = json.loads(self.path.read_text())
                except (OSError, json.JSONDecodeError):
                    other = {}
                host, pid = other.get("host"), other.get("pid")
                if host == me["host"] and isinstance(pid, int) and not _pid_alive(pid):
                    log.warning("removing stale lock %s (pid %s is gone)", self.path, pid)
                    with contextlib.suppress(FileNotFoundError):
                        self.path.unlink()
                    continue
                if not other:  # unreadable lock: another process is writing it right now
                    time.sleep(0.05)
                    continue
                raise RunLockedError(
                    f"{self.path.parent} is in use by pid {pid} on {host}",
                    "wait for it to finish, or delete the .lock file if that process is gone",
                ) from None
            with os.fdopen(fd, "w") as fh:
                json.dump(me, fh)
            self._held = True
            return self
        raise RunLockedError(f"could not lock {self.path.parent}", "retry")

    def release(self) -> None:
        """Release the lock if held."""
        if self._held:
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
            self._held = False

    def __enter__(self) -> RunLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
