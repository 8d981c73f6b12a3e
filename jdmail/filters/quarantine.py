"""The central quarantine: messages a filter held back, under ``<datadir>/quarantine``.

Each message is two files named by its queue id: ``ID.eml`` (the message as it would
have been delivered, filter headers included; a hard link of the fsynced spool file)
and ``ID.json`` (the envelope with each recipient's resolution, the client, and the
filters' reasons). Both are durable before the client hears 250. ``jdmailctl
quarantine list|show|release|delete`` works on them; release delivers the message
as it would have been delivered (jdmail.filters.release).
"""

import json
import os
import re
import shutil
import time

from jdmail.interfaces import Envelope, Resolution

_ID = re.compile(r"[0-9A-Za-z]{1,64}")


class QuarantineError(Exception):
    """No such message, or the quarantine cannot be read or written."""


def _fsync_dir(path):
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class Quarantine:
    """The quarantine directory. Blocking methods (``store``, ``list``, ``get``, ``delete``)
    are for jdmailctl and the thread pool; the server calls ``keep``."""

    def __init__(self, directory, services=None):
        self.directory = directory
        self._services = services

    def _path(self, queue_id, ext):
        if not _ID.fullmatch(queue_id or ""):
            raise QuarantineError(f"{queue_id!r} is not a quarantine id")
        return os.path.join(self.directory, f"{queue_id}.{ext}")

    async def keep(self, envelope, path, reasons):
        """Store the committed (fsynced) message at ``path`` (from the server's thread pool)."""
        await self._services.run_blocking(self.store, envelope, path, reasons)

    def store(self, envelope, path, reasons, now=None):
        os.makedirs(self.directory, mode=0o700, exist_ok=True)
        eml, meta = self._path(envelope.queue_id, "eml"), self._path(envelope.queue_id, "json")
        try:
            os.link(path, eml)
        except FileExistsError:
            raise QuarantineError(f"{envelope.queue_id} is quarantined already") from None
        except OSError:
            tmp = eml + ".tmp"
            with open(path, "rb") as src, open(tmp, "wb") as out:
                shutil.copyfileobj(src, out, 1024 * 1024)
                out.flush()
                os.fsync(out.fileno())
            os.rename(tmp, eml)
        record = {
            "id": envelope.queue_id, "arrived": time.time() if now is None else now,
            "sender": envelope.sender, "client_ip": envelope.client_ip, "helo": envelope.helo,
            "auth_user": envelope.auth_user, "smtputf8": envelope.smtputf8, "ret": envelope.ret,
            "envid": envelope.envid, "junk": envelope.junk, "size": os.stat(eml).st_size,
            "dsn": {a: [list(n), o] for a, (n, o) in envelope.dsn.items()},
            "recipients": [{"address": a, "kind": r.kind.value, "mailboxes": list(r.mailboxes),
                            "remote": list(r.remote)} for a, r in envelope.recipients],
            "reasons": list(reasons),
        }
        tmp = meta + ".tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(record, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
        os.rename(tmp, meta)
        _fsync_dir(self.directory)
        return record

    def list(self):
        """Every quarantined message's record, oldest first."""
        if not os.path.isdir(self.directory):
            return []
        out = []
        for name in os.listdir(self.directory):
            if name.endswith(".json"):
                try:
                    out.append(self.get(name[:-5]))
                except QuarantineError:
                    continue
        return sorted(out, key=lambda r: (r["arrived"], r["id"]))

    def get(self, queue_id):
        try:
            with open(self._path(queue_id, "json"), encoding="utf-8") as f:
                return json.load(f)
        except FileNotFoundError:
            raise QuarantineError(f"{queue_id} is not in the quarantine") from None
        except (OSError, ValueError) as e:
            raise QuarantineError(f"cannot read {queue_id}: {e}") from None

    def message_path(self, queue_id):
        path = self._path(queue_id, "eml")
        if not os.path.exists(path):
            raise QuarantineError(f"{queue_id} is not in the quarantine")
        return path

    def delete(self, queue_id):
        self.get(queue_id)
        for ext in ("json", "eml"):       # the record first: a message without one is invisible
            try:
                os.unlink(self._path(queue_id, ext))
            except FileNotFoundError:
                pass
        _fsync_dir(self.directory)

    @staticmethod
    def envelope(record):
        """The Envelope the message had when it was quarantined."""
        recipients = [(r["address"], Resolution(Resolution.Kind(r["kind"]), tuple(r["mailboxes"]),
                                                tuple(r["remote"])))
                      for r in record["recipients"]]
        return Envelope(record["id"], record["sender"], recipients, record.get("client_ip", ""),
                        record.get("helo", ""), record.get("auth_user", ""), record.get("smtputf8", False),
                        ret=record.get("ret", ""), envid=record.get("envid", ""),
                        dsn={a: (tuple(n), o) for a, (n, o) in record.get("dsn", {}).items()},
                        junk=record.get("junk", False))
