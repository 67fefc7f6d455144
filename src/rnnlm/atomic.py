"""Files and folders that appear whole or not at all: written under a temporary name beside their
place, then renamed into it, so an error or a kill never leaves a half-written file behind.

Used for tokenizer files, prepared corpora (rnnlm.corpus) and export folders (rnnlm.export). No torch.
"""

import os
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def write_atomic(path: Path, data: bytes) -> None:
    """Write bytes to path through a temporary file and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        os.unlink(tmp)
        raise


@contextmanager
def atomic_folder(out: Path, replace: bool = True) -> Iterator[Path]:
    """A temporary folder beside out to fill; when the block ends without an error it becomes out.

    replace=True: an existing out is moved aside, and removed only once the new folder is in place.
    replace=False: an out that appeared meanwhile (another process made the same folder) is kept,
    and the new one dropped. On an error the temporary folder is removed and out is left as it was.
    """
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.tmp-"))
    try:
        yield tmp
        _readable(tmp)
        if replace and out.exists():
            _swap(tmp, out)
        else:
            try:
                os.rename(tmp, out)
            except OSError:
                if replace or not out.exists():
                    raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _umask() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return umask


def _readable(folder: Path) -> None:
    """Give the folder and its files the usual permissions (temporary ones are private to their owner)."""
    umask = _umask()
    folder.chmod(0o777 & ~umask)
    for path in folder.rglob("*"):
        path.chmod((0o777 if path.is_dir() else 0o666) & ~umask)


def _swap(new: Path, out: Path) -> None:
    """Rename new to out, moving the existing out aside first and back if the rename fails."""
    old = Path(tempfile.mkdtemp(dir=out.parent, prefix=f".{out.name}.old-"))
    try:
        os.rename(out, old / out.name)
        try:
            os.rename(new, out)
        except BaseException:
            os.rename(old / out.name, out)
            raise
    finally:
        shutil.rmtree(old)
