"""8-bit to 7-bit conversion for a server without 8BITMIME (RFC 6152 section 3, RFC 1652).

``to_7bit(data)`` re-encodes every MIME leaf part whose body has 8-bit octets --
text parts as quoted-printable, others as base64 -- and rewrites (or adds) its
Content-Transfer-Encoding; a multipart or message/rfc822 part that said ``8bit`` now
says ``7bit``. Everything else stays byte for byte. It returns None when the message
cannot be made 7-bit without changing its meaning: 8-bit octets in a header (that is
SMTPUTF8's business, not 8BITMIME's), in a multipart preamble or epilogue, or in a
part that claims to be base64 or quoted-printable already.
"""

import binascii
import re

from jdmail.mime import MessageStructure

_CTE = re.compile(rb"(?im)^content-transfer-encoding[ \t]*:[^\r\n]*(?:\r?\n[ \t][^\r\n]*)*\r?\n")
_MIME_VERSION = re.compile(rb"(?im)^mime-version[ \t]*:")
_LINE = re.compile(rb"\r\n|\n")


def quoted_printable(body):
    """``body`` (any line ends) as quoted-printable text with CRLF line ends."""
    lines = _LINE.split(body)
    out = []
    for line in lines:
        encoded = binascii.b2a_qp(line, quotetabs=False, istext=False, header=False)
        out.append(encoded.replace(b"=\n", b"=\r\n"))
    return b"\r\n".join(out)


def base64_lines(body):
    """``body`` as base64 in 76-character lines."""
    encoded = binascii.b2a_base64(body, newline=False)
    return b"\r\n".join(encoded[i:i + 76] for i in range(0, len(encoded), 76))


def _set_cte(header, value, top_level):
    """``header`` (the part's header block, with its blank line) with the
    Content-Transfer-Encoding field set to ``value``."""
    field = b"Content-Transfer-Encoding: " + value + b"\r\n"
    if _CTE.search(header):
        return _CTE.sub(lambda _m: field, header, count=1)
    if header.endswith(b"\r\n\r\n"):
        cut = len(header) - 2
    elif header.endswith(b"\n\n"):
        cut = len(header) - 1
    else:
        cut = len(header)
        if header and not header.endswith(b"\n"):
            field = b"\r\n" + field
    extra = field
    if top_level and not _MIME_VERSION.search(header):
        extra = b"MIME-Version: 1.0\r\n" + field
    return header[:cut] + extra + header[cut:]


def to_7bit(data):
    """``data`` with every 8-bit body re-encoded (see the module docstring), or None."""
    if data.isascii():
        return data
    root = MessageStructure.parse(data)
    edits = []                              # (start, end, replacement), non-overlapping
    parts, seen = [], set()
    for part in [root] + [p for _s, p in root.walk()]:
        if id(part) not in seen:
            seen.add(id(part))
            parts.append(part)
    for part in parts:
        header = data[part.header_start:part.header_end]
        body = data[part.body_start:part.body_end]
        top_level = isinstance(part, MessageStructure)       # a message's own header
        if part.is_multipart or part.message is not None:
            if part.encoding in ("8BIT", "BINARY") and header.isascii():
                edits.append((part.header_start, part.header_end, _set_cte(header, b"7bit", top_level)))
            continue
        if body.isascii():
            continue
        if part.encoding in ("BASE64", "QUOTED-PRINTABLE") or not header.isascii():
            return None
        if part.type == "TEXT":
            new_body, cte = quoted_printable(body), b"quoted-printable"
        else:
            new_body, cte = base64_lines(body), b"base64"
        edits.append((part.header_start, part.header_end, _set_cte(header, cte, top_level)))
        edits.append((part.body_start, part.body_end, new_body))
    edits.sort()
    out, pos = [], 0
    for start, end, replacement in edits:
        if start < pos:
            return None                     # overlapping regions: not a structure we trust
        out.append(data[pos:start])
        out.append(replacement)
        pos = end
    out.append(data[pos:])
    result = b"".join(out)
    return result if result.isascii() else None
