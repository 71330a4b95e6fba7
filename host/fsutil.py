"""Atomic file output: write to a temp file beside the target, then rename.

    with atomic_output("out.json") as tmp:      # tmp: a path in the same folder
        write_something(tmp)
    # out.json appears complete or not at all; on an exception the temp file is removed.

The result gets the usual permissions (0666 minus the umask), not mkstemp's owner-only 0600.
"""
from __future__ import annotations

import contextlib
import os
import tempfile


@contextlib.contextmanager
def atomic_output(path: str, suffix: str = ".tmp"):
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=suffix, dir=folder)
    os.close(fd)
    try:
        yield tmp
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise


def write_text_atomic(path: str, text: str) -> str:
    with atomic_output(path) as tmp:
        with open(tmp, "w") as f:
            f.write(text)
    return path
