"""Our files on disk: read without hanging on what is not a regular file, locked, replaced atomically.

The caller holds the sidecar lock (`locked`) for a write. A write goes to a 0600 temporary
file in the same folder, is fsynced, renamed over the target (the target of a symlink, so the link
stays) and the folder fsynced: a crash leaves the old file or the new one, never a torn one.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Generic, TypeVar

from webapp.errors import ConfigError

Identity = tuple[int, ...]
T = TypeVar("T")


def reason(exc: OSError) -> str:
    return (exc.strerror or (os.strerror(exc.errno) if exc.errno else type(exc).__name__)).lower()


def identity(st: os.stat_result) -> Identity:
    """Changes when the file is replaced, written, or has its mode changed (ctime)."""
    return (st.st_dev, st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size, st.st_mode)


def read_text(path: Path) -> tuple[Identity | None, str]:
    """The file's identity and text; (None, "") when there is no file."""
    try:
        # O_NONBLOCK: a FIFO (or a device) at the path must not hang us; it is refused below.
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        return None, ""
    except NotADirectoryError:
        raise not_a_folder(path.parent) from None
    except OSError as exc:
        raise ConfigError(f"cannot read {path}: {reason(exc)}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        if stat.S_ISDIR(st.st_mode):
            raise ConfigError(f"cannot read {path}: is a directory")
        raise ConfigError(f"{path} is not a regular file; codex-portal uses only regular files")
    with open(fd, "rb") as file:
        try:
            data = file.read()
        except OSError as exc:
            raise ConfigError(f"cannot read {path}: {reason(exc)}") from None
    try:
        return identity(st), data.decode("utf-8")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        raise ConfigError(f"{path} is not UTF-8 text (line {line})") from None


def not_a_folder(home: Path) -> ConfigError:
    """CODEX_HOME, or a folder above it, is a file."""
    blocker = next((p for p in (home, *home.parents) if p.exists() and not p.is_dir()), home)
    if blocker == home:
        return ConfigError(f"{home} is not a folder: CODEX_HOME must name a folder")
    return ConfigError(f"{blocker} is not a folder, so CODEX_HOME ({home}) cannot be made inside it")


def create_private(directory: Path) -> None:
    """`directory` with any missing parents, each one it creates 0700 (the mode given to makedirs
    is filtered by the umask); folders already there keep their mode."""
    missing = [folder for folder in (directory, *directory.parents) if not os.path.lexists(folder)]
    os.makedirs(directory, 0o700, exist_ok=True)
    for created in missing:
        os.chmod(created, 0o700)


def make_dirs(directory: Path) -> None:
    """The folder of the config file (CODEX_HOME), created 0700 with any missing parents."""
    if directory.exists() and not directory.is_dir():
        raise ConfigError(f"{directory} is not a folder: CODEX_HOME must name a folder")
    try:
        create_private(directory)
    except OSError as exc:
        raise ConfigError(f"cannot create the folder {directory}: {reason(exc)}") from None


def write_atomic(path: Path, text: str) -> None:
    target = Path(os.path.realpath(path))  # replace the target: a symlinked config stays a symlink
    make_dirs(target.parent)
    if target.exists() and not os.access(target, os.W_OK):
        # os.replace needs only the folder's permission: respect a file the person made read-only.
        raise PermissionError(errno.EACCES, "permission denied (the file is read-only)")
    for stale in target.parent.glob(f".{target.name}.*.tmp"):
        # Left by a writer killed mid-write (they hold credentials). We hold the lock, so no live
        # writer has a temporary file now.
        with suppress(OSError):
            stale.unlink()
    import tempfile

    fd, temp = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
    try:
        with open(fd, "wb") as file:
            file.write(text.encode("utf-8"))
            file.flush()
            os.fchmod(file.fileno(), 0o600)
            os.fsync(file.fileno())
        os.replace(temp, target)
    except BaseException:
        with suppress(OSError):
            os.unlink(temp)
        raise
    with suppress(OSError):  # some filesystems cannot fsync a directory; the file is in place anyway
        dir_fd = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


@contextmanager
def locked(lock_path: Path, *, timeout: float, what: Path) -> Iterator[None]:
    """An exclusive flock on a sidecar lock file (created 0600), the lock other tools take too.

    `what` names the file the lock guards, for the messages. The folder is created (0700) first:
    only writers lock. An existing lock file of ours that others may open is made 0600 (whoever
    can open it can take the lock); when the lock cannot be had, the message names its holder.
    """
    from filelock import FileLock, Timeout

    lock = FileLock(str(lock_path), mode=0o600, timeout=timeout)
    try:
        make_dirs(lock_path.parent)
        with suppress(OSError):  # no lock file yet, or a read-only file system: nothing to tighten
            st = os.lstat(lock_path)
            if stat.S_ISREG(st.st_mode) and st.st_uid == os.geteuid() and st.st_mode & 0o077:
                os.chmod(lock_path, 0o600)
        lock.acquire()
    except Timeout:
        from webapp.peers import lock_holder

        raise ConfigError(f"{what} is locked by another process{lock_holder(lock_path)}") from None
    except OSError as exc:
        raise ConfigError(f"cannot lock {lock_path}: {reason(exc)}") from None
    try:
        yield
    finally:
        lock.release()


class ParsedFile(Generic[T]):
    """A file's parsed content, parsed again only when the file changed (one stat() otherwise)."""

    def __init__(self, path: Path, parse: Callable[[str], T], empty: T) -> None:
        self.path = path
        self._parse = parse
        self._empty = empty
        self._cache: tuple[Identity, T] | None = None

    def get(self) -> T:
        if self._cache is not None:
            try:
                if identity(os.stat(self.path)) == self._cache[0]:
                    return self._cache[1]
            except OSError:
                pass  # gone or unreadable: read_text says which
        seen, text = read_text(self.path)
        if seen is None:
            self._cache = None
            return self._empty
        value = self._parse(text)
        self._cache = (seen, value)
        return value
