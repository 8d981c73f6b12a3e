"""Raw message -> the set of tokens the classifier weighs.

Modelled on SpamBayes' tokenizer, whose choices were each measured on large
corpora: words are case-folded, kept when 3 to 12 characters long, and longer
ones become a "skip" token recording only their first character and length
bucket; URLs, e-mail addresses and IP addresses are split into their parts;
selected header fields get their own prefixed tokens (a word in the Subject
means something else than the same word in the body); HTML is stripped to its
text, with a few tag and attribute tokens kept. Only the first ``MAX_BYTES`` of a
message are read (spam's evidence is at the top; attachments add nothing).

A token is a str; the store keeps only a 64-bit hash of it (``token_id``).
"""

import email
import email.policy
import hashlib
import html
import re

from jdmail.mime import decode_bytes, decode_header_value

__all__ = ["tokenize", "token_id", "MAX_BYTES"]

MAX_BYTES = 256 * 1024
MIN_WORD, MAX_WORD = 3, 12
MAX_TOKENS = 3000            # per message: a huge message does not cost more than this

_WORD = re.compile(r"\S+")
_STRIP = "\"'()[]{}<>,.;:!?*`~|-_=+/\\"
_URL = re.compile(r"\b(https?|ftp|mailto)(:/{0,2}|:)([^\s<>\"')\]]+)", re.I)
_EMAIL = re.compile(r"[\w.+-]+@[\w-]+(?:\.[\w-]+)+")
_IPV4 = re.compile(r"\b(\d{1,3})\.(\d{1,3})\.(\d{1,3})\.(\d{1,3})\b")
_TAG = re.compile(r"<\s*(/?)\s*([a-zA-Z][a-zA-Z0-9]*)([^>]*)>", re.S)
_COMMENT = re.compile(r"<!--.*?-->", re.S)
_STYLE = re.compile(r"<(style|script)\b.*?</\1\s*>", re.S | re.I)
_HOSTNAME = re.compile(r"\b([a-z0-9-]+(?:\.[a-z0-9-]+)+)\b")
_CAPS = re.compile(r"[A-Z]")
_HTML_TAGS_KEPT = frozenset({"font", "img", "table", "center", "form", "input", "iframe",
                             "script", "a", "b", "br", "p", "div", "span", "style", "map"})

# Header fields whose words are tokenized with the field's name as prefix.
_TEXT_HEADERS = ("subject",)
_ADDRESS_HEADERS = ("from", "reply-to", "sender", "return-path", "to", "cc", "errors-to")
_VALUE_HEADERS = ("x-mailer", "user-agent", "content-type", "content-transfer-encoding",
                  "x-priority", "x-msmail-priority", "precedence", "mime-version", "importance")


def token_id(token):
    """The signed 64-bit integer the store keys a token by (BLAKE2b of its UTF-8)."""
    digest = hashlib.blake2b(token.encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def tokenize(data, bigrams=False):
    """The tokens of a raw message (bytes), each once, as a set of str.

    ``bigrams``: also emit pairs of adjacent body words ("bi:w1 w2")."""
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogateescape")
    data = data[:MAX_BYTES]
    if data.startswith(b"From "):           # an mbox separator line
        data = data.split(b"\n", 1)[1] if b"\n" in data else b""
    msg = email.message_from_bytes(data, policy=email.policy.compat32)
    tokens = set()
    _header_tokens(msg, tokens)
    words = []
    for part in msg.walk():
        _part_tokens(part, tokens, words)
    for w in words:
        tokens.add(w)
    if bigrams:
        tokens.update(f"bi:{a} {b}" for a, b in zip(words, words[1:]))
    if len(tokens) > MAX_TOKENS:
        tokens = set(sorted(tokens)[:MAX_TOKENS])
    return tokens


# --- headers ------------------------------------------------------------------------------

def _header(msg, name):
    values = msg.get_all(name) or []
    return [decode_header_value(str(v)) for v in values]


def _header_tokens(msg, tokens):
    for value in _header(msg, "subject"):
        for word in _WORD.findall(value):
            for tok in _word_tokens(word):
                tokens.add("subject:" + tok)
        letters = sum(c.isalpha() for c in value)
        if letters >= 8 and len(_CAPS.findall(value)) > 0.6 * letters:
            tokens.add("subject:CAPS")
        for run in re.findall(r"[!?$%]{2,}", value):
            tokens.add("subject:punct:" + run[:4])
    for name in _ADDRESS_HEADERS:
        values = _header(msg, name)
        if name in ("to", "cc"):
            count = sum(len(_EMAIL.findall(v)) for v in values)
            if values:
                tokens.add(f"{name}:count:{min(count, 10) if count < 10 else '10+'}")
        for value in values:
            for addr in _EMAIL.findall(value):
                local, _, domain = addr.lower().rpartition("@")
                tokens.add(f"{name}:addr:{domain}")
                if name in ("from", "reply-to", "return-path", "sender"):
                    tokens.add(f"{name}:addr:{local}@{domain}")
            if name == "from":
                display = _EMAIL.sub(" ", value)
                for word in _WORD.findall(display):
                    for tok in _word_tokens(word):
                        tokens.add("from:name:" + tok)
                if not _EMAIL.search(value):
                    tokens.add("from:no-address")
    for name in _VALUE_HEADERS:
        for value in _header(msg, name):
            text = " ".join(value.lower().split())[:40]
            tokens.add(f"{name}:{text}")
    for value in _header(msg, "received"):
        lower = value.lower()
        for host in _HOSTNAME.findall(lower):
            if not host.replace(".", "").isdigit():
                tokens.add("received:" + ".".join(host.split(".")[-2:]))
        for ip in _IPV4.findall(lower):
            tokens.add("received:ip:" + ".".join(ip[:3]))
    for value in _header(msg, "message-id"):
        _, at, domain = value.strip().strip("<>").rpartition("@")
        tokens.add("message-id:@" + (domain.lower()[:40] if at else "invalid"))
    if not msg.get_all("message-id"):
        tokens.add("message-id:none")
    if not msg.get_all("date"):
        tokens.add("date:none")


# --- body ---------------------------------------------------------------------------------

def _part_tokens(part, tokens, words):
    ctype = part.get_content_type().lower()
    if part.is_multipart():
        tokens.add("content-type:" + ctype)
        return
    filename = part.get_filename()
    if filename:
        name = decode_header_value(str(filename)).lower()
        ext = name.rpartition(".")[2] if "." in name else "none"
        tokens.add("filename:ext:" + ext[:10])
    charset = part.get_content_charset()
    if charset:
        tokens.add("charset:" + charset.lower()[:20])
    cte = (part.get("content-transfer-encoding") or "").strip().lower()
    if cte:
        tokens.add("encoding:" + cte[:20])
    if ctype not in ("text/plain", "text/html") and part.get_content_maintype() != "text":
        tokens.add("content-type:" + ctype)
        return
    try:
        payload = part.get_payload(decode=True) or b""
    except Exception:
        payload = b""
        tokens.add("payload:undecodable")
    text = decode_bytes(payload, charset)
    if ctype == "text/html":
        tokens.add("content-type:text/html")
        text = _strip_html(text, tokens)
    for word in _WORD.findall(text):
        _body_word(word, tokens, words)


def _strip_html(text, tokens):
    text = _COMMENT.sub(" ", text)
    text = _STYLE.sub(" ", text)
    for close, tag, attrs in _TAG.findall(text):
        tag = tag.lower()
        if tag in _HTML_TAGS_KEPT and not close:
            tokens.add("html:" + tag)
            for m in _URL.finditer(attrs):
                _url_tokens(m, tokens)
            if tag == "img" and re.search(r"\b(width|height)\s*=\s*[\"']?1\b", attrs, re.I):
                tokens.add("html:img:tiny")
            if tag == "font":
                for size in re.findall(r"size\s*=\s*[\"']?([+-]?\d)", attrs, re.I):
                    tokens.add("html:font:size:" + size)
    text = _TAG.sub(" ", text)
    return html.unescape(text)


def _body_word(word, tokens, words):
    if ":" in word or word[:4] in ("www.", "WWW.", "Www."):
        if "://" in word or word.lower().startswith(("mailto:", "www.")):
            for m in _URL.finditer(word):
                _url_tokens(m, tokens)
            if word[:4].lower() == "www.":
                for part in word.lower().strip(_STRIP).split("."):
                    if part:
                        tokens.add("url:" + part[:20])
            return
    if "@" in word:
        for addr in _EMAIL.findall(word):
            local, _, domain = addr.lower().rpartition("@")
            tokens.add("email name:" + local[:20])
            for part in domain.split("."):
                tokens.add("email addr:" + part)
        return
    if "." in word and _IPV4.search(word):
        for ip in _IPV4.findall(word):
            tokens.add("ip:" + ".".join(ip[:3]))
        return
    token = _word_token(word)
    if token is not None:
        words.append(token)


def _url_tokens(m, tokens):
    proto, _sep, rest = m.group(1).lower(), m.group(2), m.group(3).lower()
    tokens.add("proto:" + proto)
    if proto == "mailto":
        return
    host, _, path = rest.partition("/")
    host = host.rpartition("@")[2].partition(":")[0]
    if _IPV4.fullmatch(host):
        tokens.add("url:ip")
    for part in host.split("."):
        if part:
            tokens.add("url:" + part[:20])
    for piece in re.split(r"[/?&=.#%_-]+", path):
        if 2 < len(piece) <= 20:
            tokens.add("url:" + piece)


def _word_token(word):
    """The token of one whitespace-separated word: itself (folded, 3-12 chars), a "skip"
    token for long ones, None for very short ones."""
    w = word.strip(_STRIP).lower()
    n = len(w)
    if n < MIN_WORD:
        return None
    if n > MAX_WORD:
        return f"skip:{w[0]} {n // 10 * 10}"
    return w


def _word_tokens(word):
    token = _word_token(word)
    return [] if token is None else [token]
