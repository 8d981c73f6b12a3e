"""An in-memory IAccountStore/IFolder for IMAP protocol tests, and a session harness.

The fake follows the contracts in jdmail.interfaces: each session's IFolder has
its own view (``records``) that changes only in ``refresh`` and by the
session's own store_flags/expunge/move; MODSEQs grow with every change;
expunges are remembered for ``vanished_since``.
"""

import io
import time
from types import SimpleNamespace

from twisted.internet.address import IPv4Address
from twisted.internet.defer import fail, succeed
from twisted.internet.interfaces import ITLSTransport
from twisted.internet.testing import MemoryReactorClock, StringTransport
from zope.interface import implementer

from jdmail.auth import IAccountAvatar
from jdmail.errors import DirectoryUnavailable
from jdmail.interfaces import (
    Account, FolderChanges, FolderError, FolderInfo, IAccountStore, IFolder, MessageRecord, QuotaExceeded)

SPECIAL = {"Sent": "\\Sent", "Drafts": "\\Drafts", "Trash": "\\Trash", "Junk": "\\Junk",
           "Archive": "\\Archive"}


class FakeMessage:
    def __init__(self, uid, data, flags, modseq, internaldate):
        self.uid, self.data, self.flags = uid, data, frozenset(flags)
        self.modseq, self.internaldate = modseq, internaldate

    def record(self):
        return MessageRecord(self.uid, self.flags, self.modseq, len(self.data), self.internaldate)


class FakeMailbox:
    _validity = 1000

    def __init__(self, name, special_use=None):
        FakeMailbox._validity += 1
        self.name = name
        self.uidvalidity = FakeMailbox._validity
        self.uidnext = 1
        self.modseq = 1
        self.messages = {}          # uid -> FakeMessage (insertion = UID order)
        self.vanished = []          # (modseq, uid)
        self.special_use = special_use
        self.listeners = []
        self.recent = set()

    def notify(self):
        for cb in list(self.listeners):
            cb()

    def add(self, data, flags=(), internaldate=None):
        uid = self.uidnext
        self.uidnext += 1
        self.modseq += 1
        self.messages[uid] = FakeMessage(uid, data, flags, self.modseq,
                                         time.time() if internaldate is None else internaldate)
        self.recent.add(uid)
        self.notify()
        return uid


def _check_name(name):
    if not name or "\x00" in name or any(p in ("", ".", "..") for p in name.split("/")):
        raise FolderError("Invalid mailbox name")


@implementer(IAccountStore)
class FakeAccountStore:
    def __init__(self, quota_bytes=0, quota_messages=0):
        self.folders = {"INBOX": FakeMailbox("INBOX")}
        for name, use in SPECIAL.items():
            self.folders[name] = FakeMailbox(name, use)
        self.subscribed = {"INBOX", *SPECIAL}
        self.quota_bytes = quota_bytes
        self.quota_messages = quota_messages
        self.calls = []

    # helpers for tests
    def deliver(self, data, folder="INBOX", flags=(), internaldate=None):
        self._check_quota(len(data), 1)
        return self.folders[folder].add(data, flags, internaldate)

    def usage(self):
        return (sum(len(m.data) for f in self.folders.values() for m in f.messages.values()),
                sum(len(f.messages) for f in self.folders.values()))

    def _check_quota(self, size, count):
        used, n = self.usage()
        if self.quota_bytes and used + size > self.quota_bytes:
            raise QuotaExceeded()
        if self.quota_messages and n + count > self.quota_messages:
            raise QuotaExceeded()

    def _get(self, name):
        box = self.folders.get(name)
        if box is None:
            raise FolderError("Mailbox does not exist")
        return box

    # IAccountStore
    def list_folders(self):
        names = sorted(self.folders, key=lambda n: (n != "INBOX", n))
        out = []
        for n in names:
            children = any(o.startswith(n + "/") for o in self.folders)
            attrs = {"\\HasChildren" if children else "\\HasNoChildren"}
            if self.folders[n].special_use:
                attrs.add(self.folders[n].special_use)
            out.append(FolderInfo(n, frozenset(attrs), n in self.subscribed))
        return succeed(out)

    async def create_folder(self, name, special_use=None):
        self.calls.append(("create", name, special_use))
        _check_name(name)
        if name in self.folders:
            raise FolderError("Mailbox already exists")
        parts = name.split("/")
        for i in range(1, len(parts)):
            parent = "/".join(parts[:i])
            if parent not in self.folders:
                self.folders[parent] = FakeMailbox(parent)
        self.folders[name] = FakeMailbox(name, special_use)

    async def delete_folder(self, name):
        if name == "INBOX":
            raise FolderError("INBOX cannot be deleted")
        self._get(name)
        del self.folders[name]

    async def rename_folder(self, old, new):
        _check_name(new)
        box = self._get(old)
        if new in self.folders:
            raise FolderError("Mailbox already exists")
        if old == "INBOX":
            fresh = FakeMailbox(new)
            for m in box.messages.values():
                fresh.add(m.data, m.flags, m.internaldate)
            self.folders[new] = fresh
            for uid in list(box.messages):
                box.modseq += 1
                box.vanished.append((box.modseq, uid))
                del box.messages[uid]
            return
        for n in list(self.folders):
            if n == old or n.startswith(old + "/"):
                f = self.folders.pop(n)
                f.name = new + n[len(old):]
                self.folders[f.name] = f

    async def subscribe(self, name, subscribed=True):
        _check_name(name)
        if subscribed:
            self.subscribed.add(name)
        else:
            self.subscribed.discard(name)

    def subscriptions(self):
        return succeed(sorted(self.subscribed, key=lambda n: (n != "INBOX", n)))

    async def status(self, name):
        box = self._get(name)
        msgs = box.messages.values()
        return {"MESSAGES": len(box.messages), "RECENT": len(box.recent), "UIDNEXT": box.uidnext,
                "UIDVALIDITY": box.uidvalidity, "UNSEEN": sum("\\Seen" not in m.flags for m in msgs),
                "HIGHESTMODSEQ": box.modseq, "SIZE": sum(len(m.data) for m in msgs)}

    async def open_folder(self, name, readonly=False):
        return FakeFolder(self, self._get(name), readonly)

    async def append(self, name, data, flags=(), internaldate=None):
        box = self._get(name)
        self._check_quota(len(data), 1)
        self.calls.append(("append", name, tuple(flags), internaldate))
        uid = box.add(data, flags, internaldate)
        return box.uidvalidity, uid

    def quota(self):
        used, n = self.usage()
        return succeed((used, self.quota_bytes, n, self.quota_messages))


class FakeStructure:
    """Stands in for jdmail.mime.MessageStructure when a test only checks wiring."""

    def __init__(self, data):
        self.data = data

    def envelope(self):
        return b'(NIL "fake" NIL NIL NIL NIL NIL NIL NIL NIL)'

    def bodystructure(self, extensible):
        return b'("TEXT" "PLAIN" ("CHARSET" "us-ascii") NIL NIL "7BIT" %d 1%s)' % (
            len(self.data), b" NIL NIL NIL NIL" if extensible else b"")

    def section(self, data, spec):
        head, _, body = data.partition(b"\r\n\r\n")
        if spec == "HEADER":
            return head + b"\r\n\r\n"
        if spec == "TEXT":
            return body
        if spec.startswith("HEADER.FIELDS ("):
            names = spec[len("HEADER.FIELDS ("):-1].split()
            lines = [line for line in head.split(b"\r\n")
                     if line.split(b":")[0].decode().upper() in names]
            return b"".join(line + b"\r\n" for line in lines) + b"\r\n"
        return b""


@implementer(IFolder)
class FakeFolder:
    use_real_mime = True

    def __init__(self, account, box, readonly):
        self.account = account
        self.box = box
        self.name = box.name
        self.readonly = readonly
        self.records = [m.record() for m in box.messages.values()]
        self.recent = set(box.recent)
        if not readonly:
            box.recent.clear()
        self.closed = False
        self.refreshes = 0

    @property
    def uidvalidity(self):
        return self.box.uidvalidity

    @property
    def uidnext(self):
        return self.box.uidnext

    @property
    def highestmodseq(self):
        return self.box.modseq

    def refresh(self):
        self.refreshes += 1
        box = self.box
        current = box.messages
        expunged = [r.uid for r in self.records if r.uid not in current]
        changed = []
        kept = []
        for r in self.records:
            m = current.get(r.uid)
            if m is None:
                continue
            new = m.record()
            if new != r:
                changed.append(new)
            kept.append(new)
        known = {r.uid for r in self.records}
        added = [m.record() for uid, m in current.items() if uid not in known]
        self.recent -= set(expunged)
        for a in added:
            if a.uid in box.recent and not self.readonly:
                box.recent.discard(a.uid)
                self.recent.add(a.uid)
        self.records = kept + added
        return succeed(FolderChanges(expunged, added, changed))

    def _index(self, uid):
        for i, r in enumerate(self.records):
            if r.uid == uid:
                return i
        return None

    def store_flags(self, uids, flags, mode, unchanged_since=None):
        changed, refused = [], []
        box = self.box
        for uid in uids:
            m = box.messages.get(uid)
            if m is None:
                continue
            if unchanged_since is not None and m.modseq > unchanged_since:
                refused.append(uid)
                continue
            if mode == "+":
                new = m.flags | flags
            elif mode == "-":
                new = m.flags - flags
            else:
                new = frozenset(flags)
            if new != m.flags:
                box.modseq += 1
                m.flags, m.modseq = new, box.modseq
                changed.append(m.record())
            i = self._index(uid)
            if i is not None:
                self.records[i] = m.record()
        if changed:
            box.notify()
        return succeed((changed, refused))

    def copy(self, uids, dest):
        target = self.account.folders.get(dest)
        if target is None:
            return fail(FolderError("Mailbox does not exist"))
        try:
            self.account._check_quota(sum(len(self.box.messages[u].data) for u in uids if u in self.box.messages),
                                      len(uids))
        except QuotaExceeded as e:
            return fail(e)
        pairs = []
        for uid in uids:
            m = self.box.messages.get(uid)
            if m is not None:
                pairs.append((uid, target.add(m.data, m.flags, m.internaldate)))
        return succeed((target.uidvalidity, pairs))

    def move(self, uids, dest):
        target = self.account.folders.get(dest)
        if target is None:
            return fail(FolderError("Mailbox does not exist"))
        pairs = []
        for uid in uids:
            m = self.box.messages.get(uid)
            if m is not None:
                pairs.append((uid, target.add(m.data, m.flags, m.internaldate)))
        self._remove([p[0] for p in pairs])
        return succeed((target.uidvalidity, pairs))

    def _remove(self, uids):
        box = self.box
        for uid in uids:
            box.modseq += 1
            box.vanished.append((box.modseq, uid))
            del box.messages[uid]
            box.recent.discard(uid)
        gone = set(uids)
        self.recent -= gone
        self.records = [r for r in self.records if r.uid not in gone]
        if uids:
            box.notify()

    def expunge(self, uids=None):
        view = {r.uid for r in self.records}
        doomed = [u for u, m in self.box.messages.items()
                  if "\\Deleted" in m.flags and u in view and (uids is None or u in uids)]
        self._remove(doomed)
        return succeed(sorted(doomed))

    def open_message(self, uid):
        m = self.box.messages.get(uid)
        if m is None:
            raise FileNotFoundError(uid)
        return io.BytesIO(m.data)

    def structure(self, uid):
        m = self.box.messages.get(uid)
        if m is None:
            return fail(KeyError(uid))
        if self.use_real_mime:
            from jdmail.mime import MessageStructure
            return succeed(MessageStructure.parse(m.data))
        return succeed(FakeStructure(m.data))

    def vanished_since(self, modseq):
        return succeed(sorted(uid for ms, uid in self.box.vanished if ms > modseq))

    def listen(self, callback):
        self.box.listeners.append(callback)
        return lambda: self.box.listeners.remove(callback) if callback in self.box.listeners else None

    def close(self):
        self.closed = True


# --- the protocol harness --------------------------------------------------------------

class FakePortal:
    """Logs in USERS; "down@example.org" raises DirectoryUnavailable."""

    def __init__(self, users):
        self.users = users
        self.logouts = 0

    def login(self, credentials, mind, *interfaces):
        from twisted.cred.error import UnauthorizedLogin
        user, password = credentials.username, credentials.password
        if user == "down@example.org":
            return fail(DirectoryUnavailable())
        if self.users.get(user.lower()) != password:
            return fail(UnauthorizedLogin())

        def logout():
            self.logouts += 1
        return succeed((IAccountAvatar, Account(user.lower(), user.lower(), 0), logout))


class FakeStoreRegistry:
    def __init__(self):
        self.accounts = {}
        self.quota = {}

    def account(self, mailbox, quota_bytes=0, quota_messages=0):
        if mailbox not in self.accounts:
            self.accounts[mailbox] = FakeAccountStore(self.quota.get(mailbox, quota_bytes))
        return self.accounts[mailbox]


@implementer(ITLSTransport)
class TLSStringTransport(StringTransport):
    tls_started = None

    def startTLS(self, ctx, normal=True):
        self.tls_started = ctx


USERS = {"bob@example.org": "secret", "alice@example.org": "wonderland"}


def make_factory(**settings):
    from jdmail.imap.server import IMAPFactory
    reactor = MemoryReactorClock()
    store = FakeStoreRegistry()
    services = SimpleNamespace(reactor=reactor, store=store, threadpool=None)
    base = {"fail_delay": 0, "max_failures": 3, "implicit_tls": True, "max_message_size": 100000}
    base.update(settings)
    factory = IMAPFactory(services, FakePortal(USERS), base)
    return factory


class Session:
    """One connection to an IMAPServer over a StringTransport."""

    def __init__(self, factory, ip="10.0.0.1", tls_transport=False):
        self.factory = factory
        self.proto = factory.buildProtocol(None)
        cls = TLSStringTransport if tls_transport else StringTransport
        self.transport = cls(peerAddress=IPv4Address("TCP", ip, 40000))
        self.proto.makeConnection(self.transport)
        self.greeting = self.take()

    def take(self):
        out = self.transport.value().decode("utf-8", "replace")
        self.transport.clear()
        return out

    def send(self, data):
        if isinstance(data, str):
            data = data.encode("utf-8")
        self.proto.dataReceived(data)
        return self.take()

    def cmd(self, line):
        """Send one command line; return the response lines (CRLF split)."""
        out = self.send(line + "\r\n")
        return out.split("\r\n")[:-1] if out.endswith("\r\n") else out.split("\r\n")

    def login(self, user="bob@example.org", password=None):
        lines = self.cmd(f"L1 LOGIN {user} {password or USERS[user]}")
        assert lines[-1].startswith("L1 OK"), lines
        return self

    @property
    def store(self):
        return self.factory.services.store.account(self.proto.account.mailbox)

    def close(self):
        self.proto.connectionLost(None)
