"""The files npvit writes, and the run directory they live in: atomic writes, one run per directory, a lock.

Every file npvit writes (checkpoints, metrics.jsonl, config.json, pictures, JSON reports)
goes through :func:`atomic_write`: the bytes go to a temporary file beside the target,
are flushed to disk, and replace the target in one ``os.replace``. A process killed at any
instant leaves either the old file or the new one, never a mix, plus at most one
``.tmp-*`` file, which the next run in that directory removes.

A run directory belongs to one run. :class:`RunDir` takes an exclusive lock on
``<dir>/.lock`` for as long as training runs (``flock``: the operating system drops it
when the process ends, however it ends, so a stale lock is simply taken over), and
refuses to start a fresh run in a directory that already holds files. It also holds the
directory itself open and writes every file relative to that handle, after checking that
the path still leads to the directory it locked: a run whose directory was deleted,
renamed or replaced under it (by a new run in the same path, say) stops with one line and
can never write into the folder that now stands at its old path.
"""
from __future__ import annotations

import errno
import glob
import io
import json
import math
import os
import secrets
import shutil
import socket
import tempfile

from .errors import RunDirError, UserError, WriteError

# What a training run writes into its directory; --overwrite removes exactly these.
RUN_FILES = ("latest.npz", "best.npz", "metrics.jsonl", "config.json", "curves.png")
LOCK_FILE = ".lock"
TMP_PREFIX = ".tmp-"
# Present while --overwrite deletes the run that was in a directory: a directory that holds it was left
# half-cleared by an interrupted --overwrite, and what is left there is not a run.
REPLACING = ".replacing"


def half_replaced(folder):
    """True where an --overwrite was interrupted while it deleted the run in ``folder``."""
    return os.path.isfile(os.path.join(folder, REPLACING))


def _umask():
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()     # what open() would give a new file; mkstemp's own is 0600


def os_cause(e, folder):
    """What the operating system's refusal ``e`` means, in words, for a file in ``folder``."""
    causes = {errno.ENOSPC: f"the disk holding {folder} is full",
              errno.EDQUOT: f"the disk quota for {folder} is used up",
              errno.EROFS: f"{folder} is on a read-only file system",
              errno.EACCES: f"permission denied in {folder}",
              errno.EPERM: f"permission denied in {folder}",
              errno.ENOENT: f"the folder {folder} does not exist (any more)",
              errno.ENOTDIR: f"{folder} is not a folder",
              errno.EIO: f"the disk holding {folder} reported an input/output error"}
    return causes.get(e.errno, (e.strerror or str(e)).lower())


def _mib(n):
    """A size in words: bytes, KiB, MiB or GiB, whichever reads best."""
    if n < 2 ** 10:
        return f"{n} bytes"
    for unit, power in (("KiB", 10), ("MiB", 20)):
        if n < 2 ** (power + 10):
            return f"{n / 2 ** power:.1f} {unit}"
    return f"{n / 2 ** 30:.2f} GiB"


def atomic_write(path, write, dir_fd=None):
    """Create or replace ``path`` with what ``write(f)`` writes to a binary file object; all or nothing.
    The bytes are made in memory first, so their size is known exactly. A refusal of the system (disk full,
    read-only, ...) is a WriteError naming the file and the cause, and for a full disk the size the file
    needed and the space free; the old file, if any, is untouched and no temporary file is left. ``dir_fd``:
    an open handle of the folder to write in (a run directory's); ``path`` then names the file in messages and
    its base name is the file written in that folder, wherever the folder now is."""
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    suffix = os.path.splitext(path)[1]
    name = os.path.basename(path) if dir_fd is not None else path
    buffer = io.BytesIO()
    write(buffer)
    data = buffer.getbuffer()
    tmp = None
    try:
        if dir_fd is None:
            fd, tmp = tempfile.mkstemp(dir=folder, prefix=TMP_PREFIX, suffix=suffix)
        else:
            tmp = f"{TMP_PREFIX}{secrets.token_hex(6)}{suffix}"
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600,
                         dir_fd=dir_fd)
        if hasattr(os, "fchmod"):
            os.fchmod(fd, FILE_MODE)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        _replace(tmp, name, dir_fd)
    except BaseException as e:
        if tmp is not None:
            try:
                os.remove(tmp, dir_fd=dir_fd)
            except OSError:
                pass
        if isinstance(e, OSError) and not isinstance(e, WriteError) and e.errno in WRITE_REFUSALS:
            raise write_error(e, path, len(data)) from None
        raise
    finally:
        data.release()
    if dir_fd is None:
        _fsync_dir(folder)
    else:
        _fsync_fd(dir_fd)
    return path


WRITE_REFUSALS = (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES, errno.EPERM, errno.ENOENT, errno.ENOTDIR,
                  errno.EIO)


def write_error(e, path, size=None):
    """The WriteError that says why the system refused to write ``path`` (OSError ``e``); for a full disk or
    quota, the ``size`` in bytes the file needed and the space free, in words that never contradict."""
    folder = os.path.dirname(os.path.abspath(path))
    text = f"cannot write {path}: {os_cause(e, folder)}"
    if e.errno in (errno.ENOSPC, errno.EDQUOT):
        try:
            free = shutil.disk_usage(folder).free
        except OSError:
            free = None
        if size is not None and free is not None:
            text += (f" (it needs {_mib(size)}, {_mib(free)} free)" if free < size else
                     f" (it needs {_mib(size)}; the system refused it with {_mib(free)} free, which other writes or "
                     f"the file system's own overhead took)")
        elif size is not None:
            text += f" (it needs {_mib(size)}; the free space cannot be read)"
        elif free is not None:
            text += f" ({_mib(free)} free)"
    if os.path.exists(path):
        text += f"; the previous {os.path.basename(path)} is intact"
    return WriteError(text, e.errno)


def _replace(tmp, path, dir_fd=None):
    """The one step that makes a write visible (its own function, so the fault-injection tests can
    kill the process around it). ``dir_fd``: the folder both names are relative to (None: the paths)."""
    os.replace(tmp, path, src_dir_fd=dir_fd, dst_dir_fd=dir_fd)


def atomic_write_text(path, text):
    return atomic_write(path, lambda f: f.write(text.encode("utf-8")))


def _fsync_dir(folder):
    """Make the rename itself durable (POSIX); a no-op where directories cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:   # pragma: no cover - Windows
        return
    try:
        _fsync_fd(fd)
    finally:
        os.close(fd)


def _fsync_fd(fd):
    try:
        os.fsync(fd)
    except OSError:   # pragma: no cover - file systems without directory fsync
        pass


def check_writable(path):
    """Raise a clear OSError now if ``path`` could not be written later (missing folder, permissions)."""
    folder = os.path.dirname(os.path.abspath(os.fspath(path)))
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"cannot write {path}: the folder {folder} does not exist")
    if os.path.isdir(path):
        raise IsADirectoryError(f"cannot write {path}: it is a directory")
    if not os.access(folder, os.W_OK | os.X_OK):
        raise PermissionError(f"cannot write {path}: permission denied in {folder}")


# -- metrics.jsonl ------------------------------------------------------------------
def strict_json(value):
    """``value`` with every non-finite float replaced by None, so json.dumps gives strict JSON."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    return value


def metrics_text(history):
    """metrics.jsonl's text: the whole history, one strict JSON object per epoch."""
    return "".join(json.dumps(strict_json(r), allow_nan=False) + "\n" for r in history)


def write_metrics(path, history):
    """The whole history written at once (never appended to)."""
    atomic_write_text(path, metrics_text(history))


def read_metrics(path):
    """The epochs of a metrics.jsonl; a line that is not a JSON object is an error naming the line."""
    records = []
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except UnicodeDecodeError as e:
        raise UserError(f"{path} is not UTF-8 text ({e.reason} at byte {e.start})") from None
    for n, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            r = json.loads(line)
        except ValueError as e:
            raise UserError(f"{path} line {n} is not valid JSON ({e})") from None
        if not isinstance(r, dict) or not isinstance(r.get("epoch"), int):
            raise UserError(f"{path} line {n} is not an epoch record (a JSON object with an integer 'epoch')")
        records.append(r)
    return records


# -- the run directory -----------------------------------------------------------------
def remove_stale_temps(folder):
    """Temporary files left by a process killed while writing (only call while holding the lock)."""
    for tmp in glob.glob(os.path.join(glob.escape(folder), TMP_PREFIX + "*")):
        os.remove(tmp)


def contents(folder):
    """The entries of ``folder`` that belong to a run: everything but the lock and stale temporary files."""
    if not os.path.isdir(folder):
        return []
    return sorted(e for e in os.listdir(folder) if e != LOCK_FILE and not e.startswith(TMP_PREFIX))


class RunDir:
    """An output directory, locked for one process: ``with RunDir(path) as run: ...``. While it is held,
    ``write``/``write_text`` go into the very directory that was locked, after :meth:`check` has made sure
    the path still leads there."""

    def __init__(self, path):
        self.path = os.fspath(path)
        self.lock_path = os.path.join(self.path, LOCK_FILE)
        self.fd = None              # the lock file, flocked
        self.dir_fd = None          # the directory itself, held open: writes go here and nowhere else
        self.identity = None        # (device, inode) of the directory and of the lock file we hold

    def __enter__(self):
        if os.path.islink(self.path) and not os.path.exists(self.path):
            raise RunDirError(f"output directory {self.path} is a symbolic link to {os.readlink(self.path)}, which "
                              f"does not exist: make that folder, or choose another --out-dir")
        if os.path.exists(self.path) and not os.path.isdir(self.path):
            raise RunDirError(f"output directory {self.path} is a file, not a folder: choose another --out-dir")
        try:
            os.makedirs(self.path, exist_ok=True)
            if DIR_FD:
                self.dir_fd = os.open(self.path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0)
                                      | getattr(os, "O_CLOEXEC", 0))
            self._lock()
            remove_stale_temps(self.path)
        except OSError as e:
            self._unlock()
            where = self.path if os.path.isdir(self.path) else os.path.dirname(os.path.abspath(self.path))
            raise RunDirError(f"cannot write to output directory {self.path}: {os_cause(e, where)}") from None
        return self

    def __exit__(self, *exc):
        self._unlock(remove=True)

    def _lock(self):
        """Take ``.lock`` with flock; the file may be left from a dead process, which holds nothing."""
        while True:
            fd = os.open(self._name(LOCK_FILE), os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644,
                         dir_fd=self.dir_fd)
            try:
                _flock(fd)
            except BlockingIOError:
                holder = _read_holder(fd)
                os.close(fd)
                raise RunDirError(f"{self.path} is in use by another npvit process ({holder}); wait for it to "
                                  f"finish or choose another --out-dir") from None
            # The holder before us may have removed the file after we opened it: lock the file at the path.
            try:
                same = _inode(os.stat(self._name(LOCK_FILE), dir_fd=self.dir_fd)) == _inode(os.fstat(fd))
            except FileNotFoundError:
                same = False
            if same:
                break
            os.close(fd)
        os.ftruncate(fd, 0)
        os.write(fd, f"pid {os.getpid()} on {socket.gethostname()}\n".encode())
        self.fd = fd
        folder = os.fstat(self.dir_fd) if self.dir_fd is not None else os.stat(self.path)
        self.identity = (_inode(folder), _inode(os.fstat(fd)))

    def _unlock(self, remove=False):
        if self.fd is not None:
            if remove and self._holds_lock_file():
                try:        # removed while still held, so no one locks a file about to go
                    os.remove(self._name(LOCK_FILE), dir_fd=self.dir_fd)
                except OSError:
                    pass
            os.close(self.fd)
            self.fd = None
        if self.dir_fd is not None:
            os.close(self.dir_fd)
            self.dir_fd = None

    def _name(self, name):
        """How to reach ``name`` in this directory: relative to its handle where we hold one."""
        return name if self.dir_fd is not None else os.path.join(self.path, name)

    def _holds_lock_file(self):
        """Is the lock file in our directory still the one we hold (and not a later run's)?"""
        try:
            return _inode(os.stat(self._name(LOCK_FILE), dir_fd=self.dir_fd)) == self.identity[1]
        except (OSError, TypeError):
            return False

    def check(self):
        """Stop, with one line, if ``self.path`` no longer leads to the directory this run locked: it was
        deleted, renamed or replaced (another run may be using the path now). Called before every write."""
        if self.identity is None:
            return
        here, lock = _inode_at(self.path), _inode_at(self.lock_path)
        if (here, lock) == self.identity:
            return
        moved = self.current_location()
        if moved is not None:
            what = (f"was moved to {moved} while this run was running; the run stopped there without writing "
                    f"again: continue it with --resume {moved}")
        else:
            what = ("was deleted while this run was running, and the run's files went with it; the run stopped "
                    "without writing again")
        if here is not None:
            what += f" (the folder now at {self.path} is another one, and was left as it is)"
        raise RunDirError(f"the run directory {self.path} {what}")

    def current_location(self):
        """Where the locked directory is now, where the system can tell (Linux: through its handle); None if
        it was deleted or cannot be found."""
        if self.dir_fd is None:
            return None
        try:
            where = os.readlink(f"/proc/self/fd/{self.dir_fd}")
        except OSError:
            return None
        if where.endswith(" (deleted)") or not os.path.isdir(where):
            return None
        return where

    def write(self, name, write):
        """Write file ``name`` of this run atomically (see :func:`atomic_write`), into the directory locked."""
        self.check()
        return atomic_write(self.file(name), write, dir_fd=self.dir_fd)

    def write_text(self, name, text):
        return self.write(name, lambda f: f.write(text.encode("utf-8")))

    def claim_fresh(self, overwrite=False):
        """May a fresh run start here? Refused if the directory holds anything, unless ``overwrite``
        (then call :meth:`clear` once the new run is ready to write). True if there is something to clear."""
        found = contents(self.path)
        if half_replaced(self.path) and not overwrite:
            left = [f for f in found if f != REPLACING]
            raise RunDirError(f"{self.path} holds what is left of a run that --overwrite was deleting when it was "
                              f"interrupted ({', '.join(left) or 'nothing else'}): run again with --overwrite to "
                              f"finish replacing it, or choose another --out-dir")
        if found and not overwrite:
            raise RunDirError(
                f"{self.path} already holds files ({', '.join(found[:5])}{', ...' if len(found) > 5 else ''}): "
                f"continue that run with --resume {self.path}, replace it with --overwrite, "
                f"or choose another --out-dir")
        return bool(found)

    def clear(self):
        """Remove the files of the run that was here (--overwrite); other files are left alone. A marker
        (REPLACING) stands in the directory until the last is gone, so an interruption is recognised."""
        self.write_text(REPLACING, f"npvit --overwrite is deleting the run that was here (pid {os.getpid()})\n")
        for name in RUN_FILES:              # latest.npz first: what is left can never be resumed by mistake
            if os.path.isfile(self.file(name)):
                os.remove(self._name(name), dir_fd=self.dir_fd)
        os.remove(self._name(REPLACING), dir_fd=self.dir_fd)
        if self.dir_fd is not None:
            _fsync_fd(self.dir_fd)
        else:
            _fsync_dir(self.path)

    def file(self, name):
        return os.path.join(self.path, name)


def _inode(st):
    return st.st_dev, st.st_ino


def _inode_at(path):
    try:
        return _inode(os.stat(path))
    except OSError:
        return None


# Writing relative to a held directory handle (POSIX); elsewhere RunDir writes by path after its check.
DIR_FD = {os.open, os.rename, os.unlink, os.stat} <= os.supports_dir_fd


try:
    import fcntl

    def _flock(fd):
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
except ImportError:  # pragma: no cover - Windows
    import msvcrt

    def _flock(fd):
        try:
            msvcrt.locking(fd, msvcrt.LK_NBLCK, 1)
        except OSError as e:
            raise BlockingIOError(str(e)) from None


def _read_holder(fd):
    try:
        os.lseek(fd, 0, os.SEEK_SET)
        text = os.read(fd, 200).decode(errors="replace").strip()
    except OSError:
        text = ""
    return text or "pid unknown"
