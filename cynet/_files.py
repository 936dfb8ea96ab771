"""Atomic file writes: a file is written next to its destination, flushed to disk and renamed over it.

The one implementation behind :func:`cynet.checkpoint.save`, :func:`cynet.data.save_bundle` and
:func:`cynet.data.download_cifar10`: the destination always holds either its old complete content or the new
complete one, never a half-written file, and a failure leaves no temporary file behind.
"""
import contextlib
import os
import tempfile

__all__ = ["atomic_file"]


def _umask():
    """The process's umask, read without changing it where the system says it (Linux), else set and put back."""
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError, IndexError):
        pass
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _mode_for(path):
    """The permissions ``path`` should end with: its own when it exists (an overwrite keeps them), else those
    ``open(path, "w")`` would give (0o666 less the umask). A temporary file from :func:`tempfile.mkstemp` is 0o600."""
    try:
        return os.stat(path).st_mode & 0o7777
    except OSError:
        return 0o666 & ~_umask()


def _fsync_directory(directory):
    """Make the rename itself durable (POSIX); silently skipped where directories cannot be opened (Windows)."""
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


@contextlib.contextmanager
def atomic_file(path, *, suffix=".tmp"):
    """Open a temporary binary file next to ``path``; when the block ends normally it is flushed, fsynced, given the
    permissions ``path`` should have and renamed over ``path`` (:func:`os.replace`); when the block raises it is
    deleted and ``path`` left as it was.

    Args:
        path (str or os.PathLike): the destination; its directory must exist.
        suffix (str): the temporary file's suffix. Default ".tmp".

    Yields:
        file: the temporary file, open for binary writing.

    Example:
        >>> import os, tempfile
        >>> from cynet._files import atomic_file
        >>> target = os.path.join(tempfile.mkdtemp(), "a.bin")
        >>> with atomic_file(target) as f:
        ...     _ = f.write(b"done")
        >>> open(target, "rb").read()
        b'done'
    """
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(dir=directory, prefix="." + os.path.basename(path) + ".", suffix=suffix)
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, _mode_for(path))
        os.replace(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)
        except OSError:
            pass
        raise
    _fsync_directory(directory)
