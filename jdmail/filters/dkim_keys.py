"""DKIM signing keys per domain, under ``<datadir>/dkim/<domain>/``.

Each domain directory holds ``<selector>.key`` (PEM, PKCS#8, mode 0600) for every key
generated and ``selector`` naming the one outbound mail is signed with, so a new key can
be published in DNS before it is used (``genkey`` makes the new one current; the old
file stays until the admin removes it).
"""

import base64
import os
import re

_SELECTOR = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?$")
_DOMAIN = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}$")


class DKIMKeyError(ValueError):
    """A refused key operation; str() is one line for the admin."""


def key_dir(datadir):
    return os.path.join(datadir, "dkim")


def _check(domain, selector=None):
    if not _DOMAIN.match(domain):
        raise DKIMKeyError(f"{domain!r} is not a domain name")
    if selector is not None and not _SELECTOR.match(selector):
        raise DKIMKeyError(f"{selector!r}: a selector is letters, digits and '-' (one DNS label)")


def generate_key(datadir, domain, selector="default", bits=2048):
    """Create a new RSA key for ``domain`` with ``selector`` and make it current.
    Returns the DNS record (see :func:`dns_record`). Refuses to overwrite a key."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    domain = domain.lower().rstrip(".")
    _check(domain, selector)
    if bits < 1024 or bits > 8192:
        raise DKIMKeyError(f"--bits {bits}: expected 1024 to 8192 (RFC 8301: at least 1024, 2048 advised)")
    directory = os.path.join(key_dir(datadir), domain)
    os.makedirs(directory, mode=0o700, exist_ok=True)
    path = os.path.join(directory, f"{selector}.key")
    if os.path.exists(path):
        raise DKIMKeyError(f"a key for selector {selector!r} of {domain} exists already ({path}); "
                        "choose another --selector")
    key = rsa.generate_private_key(public_exponent=65537, key_size=bits)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption())
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(pem)
    _write_current(directory, selector)
    return dns_record(domain, selector, public_key_b64(pem))


def _write_current(directory, selector):
    tmp = os.path.join(directory, ".selector.tmp")
    with open(tmp, "w") as f:
        f.write(selector + "\n")
    os.replace(tmp, os.path.join(directory, "selector"))


def public_key_b64(pem):
    """The base64 SubjectPublicKeyInfo of a PEM private key (the DKIM ``p=`` value)."""
    from cryptography.hazmat.primitives import serialization
    key = serialization.load_pem_private_key(pem, password=None)
    der = key.public_key().public_bytes(serialization.Encoding.DER,
                                        serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(der).decode("ascii")


def txt_value(public_b64):
    """The TXT record's text: 'v=DKIM1; k=rsa; p=...'."""
    return f"v=DKIM1; k=rsa; p={public_b64}"


def dns_record(domain, selector, public_b64):
    """The record as a zone-file line, the text split into 255-byte strings:
    ``sel._domainkey.example.org. IN TXT ( "v=DKIM1; k=rsa; " "p=..." )``."""
    text = txt_value(public_b64)
    chunks = [text[i:i + 255] for i in range(0, len(text), 255)]
    quoted = " ".join(f'"{c}"' for c in chunks)
    return f"{selector}._domainkey.{domain}. IN TXT ( {quoted} )"


def current_key(datadir, domain):
    """(selector, PEM bytes) of the key ``domain`` signs with, or None when it has none."""
    domain = domain.lower().rstrip(".")
    if not _DOMAIN.match(domain):
        return None
    directory = os.path.join(key_dir(datadir), domain)
    try:
        with open(os.path.join(directory, "selector")) as f:
            selector = f.read().strip()
        if not _SELECTOR.match(selector):
            return None
        with open(os.path.join(directory, f"{selector}.key"), "rb") as f:
            return selector, f.read()
    except FileNotFoundError:
        return None


def list_keys(datadir):
    """[(domain, selector, current)] for every key on disk, sorted."""
    out = []
    root = key_dir(datadir)
    if not os.path.isdir(root):
        return out
    for domain in sorted(os.listdir(root)):
        current = current_key(datadir, domain)
        directory = os.path.join(root, domain)
        for name in sorted(os.listdir(directory)):
            if name.endswith(".key"):
                selector = name[:-4]
                out.append((domain, selector, bool(current) and current[0] == selector))
    return out
