"""Wire forms of IMAP response data: strings, flags, dates, mailbox names, sets.

Everything here returns ``bytes`` ready to be joined into a response line.
Mailbox names travel in modified UTF-7 (RFC 3501 5.1.3); the codec is
Twisted's ("imap4-utf-7", registered by importing twisted.mail.imap4), checked
here by a round trip because its decoder accepts non-canonical forms.
"""

import calendar
import re
import time

import twisted.mail.imap4  # noqa: F401  registers the "imap4-utf-7" codec

__all__ = ["MailboxNameError", "quoted", "string", "nstring", "flags_list", "internaldate",
           "parse_date_time", "parse_date", "encode_mailbox", "decode_mailbox", "mailbox",
           "format_set", "SYSTEM_FLAGS"]

SYSTEM_FLAGS = ("\\Answered", "\\Flagged", "\\Deleted", "\\Seen", "\\Draft")
_SYSTEM_BY_UPPER = {f.upper(): f for f in SYSTEM_FLAGS + ("\\Recent",)}
_MONTHS = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_MONTH_NUM = {m.upper(): i for i, m in enumerate(_MONTHS, 1)}
_QUOTE_UNSAFE = re.compile(rb'[\x00\r\n\x80-\xff]')


class MailboxNameError(ValueError):
    """A mailbox name from a client that is not valid modified UTF-7 (or UTF-8)."""


def quoted(value):
    """``value`` (str/bytes without CR, LF, NUL) as a quoted string."""
    if isinstance(value, str):
        value = value.encode("utf-8")
    return b'"' + value.replace(b"\\", b"\\\\").replace(b'"', b'\\"') + b'"'


def string(value, utf8=False):
    """A string: quoted when it can be, else a literal."""
    if isinstance(value, str):
        value = value.encode("utf-8")
    if len(value) > 1024 or _QUOTE_UNSAFE.search(value):
        if utf8 and len(value) <= 1024 and not re.search(rb"[\x00\r\n]", value):
            return quoted(value)
        return b"{%d}\r\n" % len(value) + value
    return quoted(value)


def nstring(value, utf8=False):
    return b"NIL" if value is None else string(value, utf8)


_flag_cache = {}


def flags_list(flags):
    """``(\\Seen $Junk)``: system flags first in a fixed order, then keywords sorted.
    Cached per frozenset, since a mailbox has few distinct flag sets."""
    out = _flag_cache.get(flags)
    if out is None:
        system = [f for f in SYSTEM_FLAGS if f in flags]
        if "\\Recent" in flags:
            system.append("\\Recent")
        keywords = sorted(f for f in flags if not f.startswith("\\"))
        out = ("(" + " ".join(system + keywords) + ")").encode("utf-8")
        if isinstance(flags, frozenset) and len(_flag_cache) < 10000:
            _flag_cache[flags] = out
    return out


def canonical_flag(flag):
    """A flag as stored: system flags in their RFC spelling, keywords as given."""
    if flag.startswith("\\"):
        return _SYSTEM_BY_UPPER.get(flag.upper(), flag)
    return flag


def internaldate(ts):
    """``"17-Jul-1996 09:44:25 +0000"`` for seconds since the epoch (shown in UTC)."""
    t = time.gmtime(ts)
    return b'"%02d-%s-%04d %02d:%02d:%02d +0000"' % (
        t.tm_mday, _MONTHS[t.tm_mon - 1].encode(), t.tm_year, t.tm_hour, t.tm_min, t.tm_sec)


_DATE_TIME = re.compile(r"([ 0-9]?[0-9])-([A-Za-z]{3})-([0-9]{4}) ([0-9]{2}):([0-9]{2}):([0-9]{2}) "
                        r"([+-])([0-9]{2})([0-9]{2})$")
_DATE = re.compile(r"([0-9]{1,2})-([A-Za-z]{3})-([0-9]{4})$")


def parse_date_time(text):
    """RFC 3501 date-time (``" 1-Jan-2020 10:00:00 +0200"``) -> seconds since the epoch.
    Raises ValueError."""
    m = _DATE_TIME.match(text)
    if not m:
        raise ValueError("expected a date-time such as \"01-Jan-2020 10:00:00 +0000\"")
    day, mon, year, hh, mm, ss, sign, zh, zm = m.groups()
    month = _MONTH_NUM.get(mon.upper())
    if month is None:
        raise ValueError("unknown month")
    day, year, hh, mm, ss = int(day.strip()), int(year), int(hh), int(mm), int(ss)
    if not (1 <= day <= 31 and hh < 24 and mm < 60 and ss < 61 and int(zm) < 60):
        raise ValueError("date-time out of range")
    try:
        if day > calendar.monthrange(year, month)[1]:       # 31-Feb: timegm would make it 2-Mar
            raise ValueError
        ts = calendar.timegm((year, month, day, hh, mm, min(ss, 59), 0, 0, 0))
        time.gmtime(ts)
    except (OverflowError, ValueError, OSError):
        raise ValueError("date-time out of range") from None
    offset = (int(zh) * 60 + int(zm)) * 60
    return float(ts - offset if sign == "+" else ts + offset)


def parse_date(text):
    """RFC 3501 date (``1-Feb-1994``) -> (year, month, day). Raises ValueError."""
    m = _DATE.match(text)
    if not m or m.group(2).upper() not in _MONTH_NUM:
        raise ValueError("expected a date such as 1-Feb-1994")
    return int(m.group(3)), _MONTH_NUM[m.group(2).upper()], int(m.group(1))


def encode_mailbox(name):
    """A Unicode mailbox name in modified UTF-7 (bytes)."""
    return name.encode("imap4-utf-7")


def decode_mailbox(raw, utf8=False):
    """A mailbox name from a client (an astring token: Atom or bytes) as Unicode.

    Refuses (MailboxNameError) what is not canonical modified UTF-7 (or, with
    UTF8=ACCEPT, UTF-8), and control characters. "INBOX" in any case becomes "INBOX".
    """
    if isinstance(raw, list):
        raise MailboxNameError("Expected a mailbox name")
    data = raw.encode("ascii") if isinstance(raw, str) else bytes(raw)
    if any(c < 0x20 or c == 0x7F for c in data):
        raise MailboxNameError("Mailbox name contains control characters")
    if utf8 and any(c > 0x7E for c in data):
        try:
            name = data.decode("utf-8")
        except UnicodeDecodeError:
            raise MailboxNameError("Mailbox name is not valid UTF-8") from None
    else:
        if any(c > 0x7E for c in data):
            raise MailboxNameError("Mailbox name is not valid modified UTF-7 (8-bit characters)")
        try:
            name = data.decode("imap4-utf-7")
        except (UnicodeDecodeError, ValueError):
            raise MailboxNameError("Mailbox name is not valid modified UTF-7") from None
        if name.encode("imap4-utf-7") != data:
            raise MailboxNameError("Mailbox name is not valid modified UTF-7")
    if any(ord(c) < 0x20 or 0x7F <= ord(c) < 0xA0 for c in name):
        raise MailboxNameError("Mailbox name contains control characters")
    upper = name.upper()
    if upper == "INBOX":
        return "INBOX"
    if upper.startswith("INBOX/"):
        return "INBOX" + name[5:]
    return name


def mailbox(name, utf8=False):
    """A mailbox name for a response: modified UTF-7 (or UTF-8), quoted."""
    if utf8:
        return quoted(name)
    return quoted(encode_mailbox(name))


def format_set(numbers):
    """Ascending unique ints -> ``1:3,5,7:9`` (empty string for none)."""
    out = []
    start = prev = None
    for n in numbers:
        if start is None:
            start = prev = n
        elif n == prev + 1:
            prev = n
        else:
            out.append(str(start) if start == prev else "%d:%d" % (start, prev))
            start = prev = n
    if start is not None:
        out.append(str(start) if start == prev else "%d:%d" % (start, prev))
    return ",".join(out)
