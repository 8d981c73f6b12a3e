"""Generated mailboxes: realistic mixed messages written straight into Maildirs.

Every message is built from a pool of pre-rendered bodies (plain text,
multipart/alternative text+HTML, multipart/mixed with a small or a ~100 KB
base64 attachment) under per-message headers (Received, Date, From, To,
Subject, Message-ID, ...), with CRLF line ends. Sizes centre on ~4 KB; a share
of the messages (``big_share``) carries a ~100 KB attachment.

Files are named the way Dovecot and jdmail name them,
``<time>.M<usec>P<pid>Q<n>.<host>,S=<size>``: unseen mail goes partly to
``new/`` and partly to ``cur/`` with ``:2,``; the rest to ``cur/`` with
``:2,S``, ``:2,FS`` or ``:2,RS``. The file's mtime is the message's date (the
INTERNALDATE both servers report). Generation is deterministic (seeded).

A second server gets the same mailbox through hard links (``link_tree``): the
same bytes without writing them twice. Both servers only rename Maildir files,
never rewrite them, so the copies stay independent.
"""

import base64
import email.utils
import os
import random

WORDS = ("meeting report invoice project budget review schedule update quarterly "
         "contract proposal draft final deadline customer support release server "
         "network backup migration holiday travel lunch team agenda minutes notes "
         "question answer request approval payment order shipping delivery account "
         "password security policy training office weekend monday tuesday friday "
         "the a of and to in for on with at by from about this that please thanks "
         "regards attached see below following next last week month year").split()
SUBJECT_WORDS = ("invoice", "meeting", "report", "budget", "release", "holiday", "contract")
NAMES = ("Alice Martin", "Bruno Keller", "Chloé Dubois", "Dmitri Ivanov", "Eva Novak",
         "Farid Haddad", "Grace Okafor", "Hiro Tanaka", "Inès Laurent", "Jonas Berg")
DOMAINS = ("example.net", "example.com", "corp.example", "lists.example.org")
HOST = "bench.example"


def _para(rng, words):
    out, line = [], []
    for _ in range(words):
        line.append(rng.choice(WORDS))
        if len(line) >= 12:
            out.append(" ".join(line))
            line = []
    if line:
        out.append(" ".join(line))
    text = "\r\n".join(out)
    return text[:1].upper() + text[1:] + "."


def _text(rng, size):
    parts, n = [], 0
    while n < size:
        p = _para(rng, rng.randint(30, 90))
        parts.append(p)
        n += len(p) + 4
    return "\r\n\r\n".join(parts) + "\r\n"


def _b64(rng, size):
    raw = base64.b64encode(rng.randbytes(size))
    return b"\r\n".join(raw[i:i + 76] for i in range(0, len(raw), 76)) + b"\r\n"


def _bodies(rng, kind, count):
    """``count`` rendered (content-headers, body) pairs of one kind, as bytes."""
    out = []
    for i in range(count):
        if kind == "plain":
            body = _text(rng, rng.randint(1500, 5000)).encode()
            head = b"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 7bit\r\n"
        elif kind == "alternative":
            text = _text(rng, rng.randint(800, 2500))
            html = "<html><body>" + "".join(f"<p>{p}</p>\r\n" for p in text.split("\r\n\r\n")) + "</body></html>\r\n"
            b = f"alt-{i}-{rng.getrandbits(32):08x}"
            body = (f"This is a multi-part message in MIME format.\r\n\r\n--{b}\r\n"
                    f"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 7bit\r\n\r\n{text}\r\n"
                    f"--{b}\r\nContent-Type: text/html; charset=utf-8\r\nContent-Transfer-Encoding: 7bit\r\n\r\n"
                    f"{html}\r\n--{b}--\r\n").encode()
            head = f'Content-Type: multipart/alternative; boundary="{b}"\r\n'.encode()
        else:   # "attach" (small image) or "big" (~100 KB document)
            size = rng.randint(1000, 3000) if kind == "attach" else rng.randint(70000, 76000)
            ctype, fname = (("image/png", f"photo{i}.png") if kind == "attach"
                            else ("application/pdf", f"report-{i}.pdf"))
            b = f"mix-{i}-{rng.getrandbits(32):08x}"
            text = _text(rng, rng.randint(400, 1500))
            body = (f"This is a multi-part message in MIME format.\r\n\r\n--{b}\r\n"
                    f"Content-Type: text/plain; charset=utf-8\r\nContent-Transfer-Encoding: 7bit\r\n\r\n{text}\r\n"
                    f"--{b}\r\nContent-Type: {ctype}; name=\"{fname}\"\r\n"
                    f"Content-Disposition: attachment; filename=\"{fname}\"\r\n"
                    f"Content-Transfer-Encoding: base64\r\n\r\n").encode() + _b64(rng, size) + f"\r\n--{b}--\r\n".encode()
            head = f'Content-Type: multipart/mixed; boundary="{b}"\r\n'.encode()
        out.append((head, body))
    return out


class MessageFactory:
    """Deterministic realistic messages: ``make(rng, to, when)`` -> bytes (CRLF)."""

    def __init__(self, seed=1):
        rng = random.Random(seed)
        self.pools = {kind: _bodies(rng, kind, n)
                      for kind, n in (("plain", 48), ("alternative", 24), ("attach", 12), ("big", 6))}

    def make(self, rng, to, when, big_share=0.05):
        r = rng.random()
        if r < big_share:
            kind = "big"
        elif r < big_share + 0.10:
            kind = "attach"
        elif r < big_share + 0.35:
            kind = "alternative"
        else:
            kind = "plain"
        head, body = rng.choice(self.pools[kind])
        name = rng.choice(NAMES)
        local = name.split()[0].lower().replace("é", "e").replace("è", "e")
        sender = f"{local}@{rng.choice(DOMAINS)}"
        subject = " ".join([rng.choice(SUBJECT_WORDS)] + [rng.choice(WORDS) for _ in range(rng.randint(2, 6))])
        date = email.utils.formatdate(when, localtime=False).replace("-0000", "+0000")
        mid = f"<{int(when)}.{rng.getrandbits(48):012x}@{sender.split('@')[1]}>"
        headers = (f"Return-Path: <{sender}>\r\n"
                   f"Delivered-To: {to}\r\n"
                   f"Received: from mx.{sender.split('@')[1]} (mx.{sender.split('@')[1]} [192.0.2.{rng.randint(1, 254)}])\r\n"
                   f"\tby mail.example.org with ESMTPS id {rng.getrandbits(40):010X}\r\n"
                   f"\tfor <{to}>; {date}\r\n"
                   f"Date: {date}\r\n"
                   f"From: {name} <{sender}>\r\n"
                   f"To: {to}\r\n"
                   f"Subject: {subject.capitalize()}\r\n"
                   f"Message-ID: {mid}\r\n"
                   f"MIME-Version: 1.0\r\n").encode("utf-8")
        if rng.random() < 0.3:
            headers += f"Cc: {rng.choice(NAMES)} <team@{rng.choice(DOMAINS)}>\r\n".encode("utf-8")
        return headers + head + b"\r\n" + body


def _flags(rng):
    """(subdir, maildir flags) with a realistic spread: ~20% unseen, some flagged/answered."""
    r = rng.random()
    if r < 0.10:
        return "new", None
    if r < 0.20:
        return "cur", ""
    if r < 0.25:
        return "cur", "FS"
    if r < 0.32:
        return "cur", "RS"
    return "cur", "S"


class MaildirWriter:
    """Writes messages into Maildirs with Dovecot-style names; counts files and bytes."""

    def __init__(self, factory, uid=None, gid=None, seed=7):
        self.factory = factory
        self.uid, self.gid = uid, gid
        self.seed = seed
        self.q = 0
        self.files = 0
        self.bytes = 0
        self.pid = os.getpid()

    def make_maildir(self, path):
        for sub in ("new", "cur", "tmp"):
            os.makedirs(os.path.join(path, sub), exist_ok=True)

    def fill(self, maildir, address, count, big_share=0.05, start=None, span=365 * 86400, seed=None):
        """Write ``count`` messages for ``address`` into ``maildir``, oldest first."""
        self.make_maildir(maildir)
        rng = random.Random(f"{self.seed}:{address}:{seed}")
        start = start if start is not None else 1_700_000_000 - span
        step = span / max(count, 1)
        for i in range(count):
            when = int(start + i * step)
            data = self.factory.make(rng, address, when, big_share)
            sub, flags = _flags(rng)
            self.q += 1
            base = f"{when}.M{rng.randint(0, 999999)}P{self.pid}Q{self.q}.{HOST},S={len(data)}"
            name = base if flags is None else f"{base}:2,{flags}"
            path = os.path.join(maildir, sub, name)
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
            try:
                os.write(fd, data)
                if self.uid is not None:
                    os.fchown(fd, self.uid, self.gid)
            finally:
                os.close(fd)
            os.utime(path, (when, when))
            self.files += 1
            self.bytes += len(data)


def link_tree(src, dst):
    """Recreate the directory tree ``src`` at ``dst``, hard-linking every file."""
    n = 0
    for root, dirs, files in os.walk(src):
        rel = os.path.relpath(root, src)
        target = os.path.join(dst, rel) if rel != "." else dst
        os.makedirs(target, exist_ok=True)
        for f in files:
            os.link(os.path.join(root, f), os.path.join(target, f))
            n += 1
    return n


def chown_tree(path, uid, gid):
    """chown a directory tree (directories and files) to the mail user."""
    for root, dirs, files in os.walk(path):
        os.chown(root, uid, gid)
        for f in files:
            os.chown(os.path.join(root, f), uid, gid)
