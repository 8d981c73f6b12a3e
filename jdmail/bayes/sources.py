"""Messages to train from: a Maildir folder, a directory of message files, or an mbox file."""

import mailbox
import os

__all__ = ["read_messages", "SourceError"]


class SourceError(Exception):
    """The path is not something messages can be read from; str() says why."""


def read_messages(path, limit=256 * 1024):
    """Yield the raw octets (at most ``limit`` of each) of every message at ``path``:
    a Maildir (its cur/ and new/), a directory of one-message files, or an mbox file."""
    if os.path.isdir(path):
        subdirs = [os.path.join(path, d) for d in ("cur", "new") if os.path.isdir(os.path.join(path, d))]
        dirs = subdirs or [path]
        for d in dirs:
            for name in sorted(os.listdir(d)):
                if name.startswith("."):
                    continue
                full = os.path.join(d, name)
                if not os.path.isfile(full):
                    continue
                with open(full, "rb") as f:
                    yield f.read(limit)
        return
    if not os.path.isfile(path):
        raise SourceError(f"{path}: no such file or directory")
    with open(path, "rb") as f:
        head = f.read(5)
    if head != b"From ":
        raise SourceError(f"{path}: not an mbox file (it does not start with a 'From ' line) "
                          "and not a Maildir folder")
    box = mailbox.mbox(path, create=False)
    try:
        for key in box.iterkeys():
            yield box.get_bytes(key)[:limit]
    finally:
        box.close()
