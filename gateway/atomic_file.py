"""Writing a small file whole or not at all: a temporary file beside it, synced, renamed over it.
A reader (or the next start) never sees half of it, whatever stops the write (a full disk, a
kill). The budgets' snapshot and the Parquet export's owner file are written so."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path


def write_atomically(path: Path, text: str) -> None:
    """Replace ``path`` with ``text`` (UTF-8), creating its directory; on any failure the old file
    (or none) stays and no temporary file is left."""
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".")
    try:
        with os.fdopen(handle, "w", encoding="utf-8") as out:
            out.write(text)
            out.flush()
            os.fsync(out.fileno())
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise
