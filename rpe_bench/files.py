"""Writing files that other processes read: readers never see half a file, a crash never leaves one."""
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator


@contextmanager
def atomic_write(path: Path) -> Iterator[Path]:
    """Yields a temporary path in `path`'s folder; when the block succeeds it is renamed onto `path` (readable
    by all, as results and caches are meant to be shared), and when it fails it is removed."""
    path = Path(path)
    handle, temp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(handle)
    temp = Path(temp_name)
    try:
        yield temp
        temp.chmod(0o644)  # mkstemp creates 0600
        os.replace(temp, path)
    finally:
        temp.unlink(missing_ok=True)
