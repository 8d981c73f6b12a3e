"""RFC 3464 delivery status notifications (issue 4): bounces, delay warnings and
RFC 3461 success notices, built as bytes with CRLF line ends.

Pure functions: the only I/O is reading the original message from the binary
file object handed to :func:`build_dsn`.  Sending the result (from the null
reverse-path, to ``message.sender``) is the queue runner's business; use
:func:`should_bounce` and :func:`wants` (or :func:`notice_recipients`) first.

``QueuedRecipient.last_error`` holds either a remote SMTP reply ("550 5.1.1
<x@y>: User unknown") or a local reason.  A reply may be prefixed by the remote
host as ``"mx.example.org said: 550 ..."``; the host can also be given through
the ``remote_mta`` argument of :func:`build_dsn`.
"""

import email.quoprimime
import os
import re
import time
from email.utils import formatdate

FAILURE = "failure"
DELAY = "delay"
SUCCESS = "success"
KINDS = (FAILURE, DELAY, SUCCESS)

#: Whole originals larger than this are returned as headers only.
MAX_FULL_ORIGINAL = 1024 * 1024
#: Never read more than this looking for the end of the original's header.
MAX_HEADERS = 256 * 1024
DEFAULT_LIFETIME = 5 * 24 * 3600

SUBJECTS = {
    FAILURE: "Undelivered Mail Returned to Sender",
    DELAY: "Delayed Mail (still being retried)",
    SUCCESS: "Successful Mail Delivery Report",
}
# The runner's reason for a recipient bounced at the end of the lifetime; its DSN says
# 4.4.7 (RFC 3463: delivery time expired, a persistent transient failure).
EXPIRED = "delivery time expired; last error: "
EXPIRED_STATUS = "4.4.7"
DEFAULT_STATUS = {FAILURE: "5.0.0", DELAY: "4.0.0", SUCCESS: "2.0.0"}
DEFAULT_NOTIFY = frozenset({"FAILURE", "DELAY"})

_ENHANCED = re.compile(r"^\s*(?:[245]\d\d(?:[ -]|$))?\s*([245])\.(\d{1,3})\.(\d{1,3})(?!\S)")
_BASIC = re.compile(r"^\s*([245])\d\d(?:[ -]|$)")
_SAID = re.compile(r"^\s*(?:host\s+)?(\S+?)\s+said:\s*(.*)$", re.S | re.I)
_XTEXT = re.compile(r"\+([0-9A-Fa-f]{2})")


def enhanced_code(reply_text, default):
    """The RFC 3463 enhanced status code of an SMTP reply ("550 5.1.1 ..." ->
    "5.1.1"), or ``default`` when the reply carries none."""
    m = _ENHANCED.match(reply_text or "")
    if m is None:
        return default
    return ".".join(str(int(x)) for x in m.groups())


def should_bounce(message):
    """False when the message's sender is the null reverse-path: never bounce a bounce."""
    return (message.sender or "").strip() not in ("", "<>")


def wants(kind, recipient):
    """Whether ``recipient`` (a QueuedRecipient) asked for a ``kind`` notice per
    its RFC 3461 NOTIFY (NEVER, SUCCESS, FAILURE, DELAY; default FAILURE,DELAY)."""
    if kind not in KINDS:
        raise ValueError(f"unknown DSN kind {kind!r}")
    notify = {str(n).strip().upper() for n in (recipient.notify or ()) if str(n).strip()}
    if not notify:
        notify = DEFAULT_NOTIFY
    if "NEVER" in notify:
        return False
    return kind.upper() in notify


def notice_recipients(kind, message, recipients=None):
    """The recipients (default: all of ``message``'s) that get a ``kind`` notice:
    none when the sender is the null path, else those whose NOTIFY asks for it."""
    if not should_bounce(message):
        return []
    if recipients is None:
        recipients = message.recipients
    return [r for r in recipients if wants(kind, r)]


def xtext_decode(value):
    """Decode RFC 3461 xtext ("+2B" -> "+")."""
    return _XTEXT.sub(lambda m: chr(int(m.group(1), 16)), value or "")


def _ascii_field(value):
    """One header-safe line of printable US-ASCII."""
    value = re.sub(r"\s+", " ", str(value or "")).strip()
    return value.encode("ascii", "replace").decode("ascii")


def _address_field(address):
    """``type; address`` for a *-Recipient field; non-ASCII addresses use the
    RFC 6533 utf-8 type with \\x{HEX} escapes so the part stays 7-bit."""
    address = _ascii_field_keep(address)
    if address.isascii():
        return "rfc822; " + address
    return "utf-8; " + "".join(c if c.isascii() and c not in "\\+=" else "\\x{%X}" % ord(c)
                               for c in address)


def _ascii_field_keep(value):
    return re.sub(r"\s+", " ", str(value or "")).strip()


def _original_recipient(orcpt):
    orcpt = _ascii_field_keep(xtext_decode(orcpt))
    if not orcpt:
        return None
    if ";" in orcpt:
        addr_type, _, address = orcpt.partition(";")
        addr_type, address = addr_type.strip().lower(), address.strip()
        if addr_type == "rfc822":
            return _address_field(address)
        if addr_type == "utf-8":
            return "utf-8; " + _ascii_field(address)
        return _ascii_field(f"{addr_type}; {address}")
    return _address_field(orcpt)


def _split_error(error, remote_mta):
    """(remote host or '', reply or local reason, is-an-SMTP-reply)."""
    error = (error or "").strip()
    if error.startswith(EXPIRED):
        error = error[len(EXPIRED):]      # the last attempt's answer is the diagnostic
    m = _SAID.match(error)
    if m and _BASIC.match(m.group(2)):
        remote_mta, error = remote_mta or m.group(1), m.group(2).strip()
    return remote_mta or "", error, bool(_BASIC.match(error))


def _status(kind, reply):
    default = DEFAULT_STATUS[kind]
    basic = _BASIC.match(reply or "")
    if basic:
        default = basic.group(1) + ".0.0"
    return enhanced_code(reply, default)


def _boundary(reporting_mta):
    """A fresh RFC 2046 boundary (bchars only, at most 70 of them)."""
    host = re.sub(r"[^A-Za-z0-9'()+_,./:=?-]", "", reporting_mta)
    return f"={os.urandom(12).hex()}/{host}"[:70]


def _date(t):
    return formatdate(t, usegmt=True)


def _crlf(data):
    """Every line end as CRLF (bare CR and bare LF alike)."""
    return data.replace(b"\r\n", b"\n").replace(b"\r", b"\n").replace(b"\n", b"\r\n")


def _read_headers(original):
    """The original's header block (without the blank line), from its start."""
    data = b""
    while len(data) < MAX_HEADERS:
        chunk = original.read(65536)
        if not chunk:
            break
        data += chunk
        if re.search(rb"\r?\n\r?\n", data) or data.startswith((b"\n", b"\r\n")):
            break
    if data.startswith((b"\n", b"\r\n")):
        return b""
    m = re.search(rb"\r?\n\r?\n", data)
    if m:
        data = data[:m.start()]
    else:
        data = data[:MAX_HEADERS]
        # No end of header seen: stop at the last complete line.
        if b"\n" in data:
            data = data[:data.rindex(b"\n")]
    return _crlf(data).rstrip(b"\r\n")


def _read_original(original, full, cap):
    """(content type, octets, truncated) for the third part."""
    if original is None:
        return None, b"", False
    if full:
        data = original.read(cap + 1)
        if len(data) <= cap:
            data = _crlf(data)
            if data and not data.endswith(b"\r\n"):
                data += b"\r\n"
            return "message/rfc822", data, False
        original.seek(0)
        return "text/rfc822-headers", _read_headers(original) + b"\r\n", True
    return "text/rfc822-headers", _read_headers(original) + b"\r\n", False


def _text_part(kind, message, rows, reporting_mta, truncated, lifetime, now):
    lines = [f"This is the mail system at host {reporting_mta}.", ""]
    if kind == FAILURE:
        lines += ["I'm sorry to have to inform you that your message could not",
                  "be delivered to one or more recipients. It's attached below.", "",
                  "The mail system", ""]
    elif kind == DELAY:
        until = _date(message.arrived + lifetime)
        lines += ["####################################################################",
                  "# THIS IS A WARNING ONLY.  YOU DO NOT NEED TO RESEND YOUR MESSAGE. #",
                  "####################################################################", "",
                  "Your message could not be delivered yet. The mail system will keep",
                  f"trying until {until}.", "",
                  "The mail system", ""]
    else:
        lines += ["Your message was successfully delivered to the destination(s)",
                  "listed below. If the message was delivered to a mailbox you will",
                  "receive no further notifications. Otherwise you may still receive",
                  "notifications of mail delivery errors from other systems.", "",
                  "The mail system", ""]
    for r, remote, reply, _ in rows:
        text = reply or {FAILURE: "delivery failed", DELAY: "delivery temporarily failed",
                         SUCCESS: "delivery successful"}[kind]
        if remote:
            text = f"host {remote} said: {text}"
        if kind == FAILURE and (r.last_error or "").startswith(EXPIRED):
            text = EXPIRED + text
        lines.append(f"<{r.address}>: {text}")
        lines.append("")
    if truncated:
        lines += ["The original message was too large to return in full; its headers",
                  "are attached below.", ""]
    text = "\r\n".join(re.sub(r"[\r\n]+", " ", line) for line in lines)
    if text.isascii():
        return (b"Content-Description: Notification\r\n"
                b"Content-Type: text/plain; charset=us-ascii\r\n"
                b"Content-Transfer-Encoding: 7bit\r\n\r\n" + text.encode("ascii") + b"\r\n")
    body = email.quoprimime.body_encode(text.encode("utf-8").decode("latin-1"), eol="\r\n")
    return (b"Content-Description: Notification\r\n"
            b"Content-Type: text/plain; charset=utf-8\r\n"
            b"Content-Transfer-Encoding: quoted-printable\r\n\r\n" + body.encode("ascii") + b"\r\n")


def build_dsn(kind, message, recipients, original, reporting_mta, now=None, boundary=None,
              *, remote_mta=None, relayed=False, lifetime=DEFAULT_LIFETIME,
              max_full=MAX_FULL_ORIGINAL, message_id=None):
    """An RFC 3464 multipart/report DSN as bytes with CRLF line ends.

    ``kind``: "failure" (bounce), "delay" (warning) or "success" (RFC 3461
    NOTIFY=SUCCESS).  ``message``: the QueuedMessage (sender, queue_id,
    arrived, ret, envid).  ``recipients``: the QueuedRecipients concerned.
    ``original``: a binary file object of the original message, read from its
    current position (None: no third part).  ``reporting_mta``: our host name.

    Keyword options: ``remote_mta`` - the remote host for every recipient (str)
    or per address (dict); ``relayed`` - success notices say Action: relayed
    (handed to a server without DSN support) instead of delivered;
    ``lifetime`` - seconds in the queue before bouncing (Will-Retry-Until of a
    delay warning); ``max_full`` - larger originals are returned headers only;
    ``message_id`` - the Message-ID to use (default: generated).

    The third part is the whole original (message/rfc822) when RET=FULL, or when
    RET is unset for a failure; the headers only (text/rfc822-headers) for
    RET=HDRS, for delay and success notices by default, and when the original is
    larger than ``max_full``.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown DSN kind {kind!r}")
    now = time.time() if now is None else now
    reporting_mta = _ascii_field(reporting_mta)
    ret = (message.ret or "").strip().upper()
    full = ret == "FULL" or (ret == "" and kind == FAILURE)
    part3_type, part3, truncated = _read_original(original, full, max_full)

    rows = []
    for r in recipients:
        host = remote_mta.get(r.address, "") if isinstance(remote_mta, dict) else remote_mta
        host, reply, is_smtp = _split_error(r.last_error, host)
        rows.append((r, host, reply, is_smtp))

    if boundary is None:
        boundary = _boundary(reporting_mta)
        while part3 and boundary.encode() in part3:
            boundary = _boundary(reporting_mta)
    if message_id is None:
        message_id = f"<{int(now)}.{os.urandom(8).hex()}.{message.queue_id}@{reporting_mta}>"

    sender = _ascii_field_keep(message.sender)
    header = [
        f"From: Mail Delivery System <MAILER-DAEMON@{reporting_mta}>",
        f"To: {sender}",
        f"Subject: {SUBJECTS[kind]}",
        f"Date: {_date(now)}",
        f"Message-ID: {message_id}",
        "Auto-Submitted: auto-replied",
        "MIME-Version: 1.0",
        "Content-Type: multipart/report; report-type=delivery-status;",
        f'\tboundary="{boundary}"',
        "Content-Transfer-Encoding: " + ("8bit" if not part3.isascii() else "7bit"),
    ]

    status = [f"Reporting-MTA: dns; {reporting_mta}"]
    if message.queue_id:
        status.append(f"X-Queue-ID: {_ascii_field(message.queue_id)}")
    if message.envid:
        status.append(f"Original-Envelope-Id: {_ascii_field(xtext_decode(message.envid))}")
    status.append(f"Arrival-Date: {_date(message.arrived)}")
    action = {FAILURE: "failed", DELAY: "delayed",
              SUCCESS: "relayed" if relayed else "delivered"}[kind]
    for r, host, reply, is_smtp in rows:
        status.append("")
        original_rcpt = _original_recipient(r.orcpt)
        if original_rcpt:
            status.append(f"Original-Recipient: {original_rcpt}")
        status.append(f"Final-Recipient: {_address_field(r.address)}")
        status.append(f"Action: {action}")
        expired = kind == FAILURE and (r.last_error or "").startswith(EXPIRED)
        status.append(f"Status: {EXPIRED_STATUS if expired else _status(kind, reply)}")
        if host:
            status.append(f"Remote-MTA: dns; {_ascii_field(host)}")
        if is_smtp:
            status.append(f"Diagnostic-Code: smtp; {_ascii_field(reply)}")
        elif reply and kind != SUCCESS:
            status.append(f"Diagnostic-Code: X-jdmail; {_ascii_field(reply)}")
        status.append(f"Last-Attempt-Date: {_date(now)}")
        if kind == DELAY:
            status.append(f"Will-Retry-Until: {_date(message.arrived + lifetime)}")

    b = boundary.encode("ascii")
    out = "\r\n".join(header).encode("utf-8") + b"\r\n\r\n"
    out += b"This is a MIME-encapsulated message.\r\n\r\n"
    out += b"--" + b + b"\r\n"
    out += _text_part(kind, message, rows, reporting_mta, truncated, lifetime, now)
    out += b"\r\n--" + b + b"\r\n"
    out += (b"Content-Description: Delivery report\r\n"
            b"Content-Type: message/delivery-status\r\n\r\n")
    out += "\r\n".join(status).encode("ascii") + b"\r\n"
    if part3_type:
        description = b"Undelivered Message" if kind == FAILURE else b"Message"
        if part3_type == "text/rfc822-headers":
            description += b" Headers"
        out += b"\r\n--" + b + b"\r\n"
        out += b"Content-Description: " + description + b"\r\n"
        out += b"Content-Type: " + part3_type.encode("ascii") + b"\r\n"
        if not part3.isascii():
            out += b"Content-Transfer-Encoding: 8bit\r\n"
        out += b"\r\n" + part3
    out += b"\r\n--" + b + b"--\r\n"
    return out
