"""Password hashes in Dovecot's ``{SCHEME}`` form, so existing user tables migrate as they are.

``hash_password`` writes {BLF-CRYPT} (bcrypt, cost 10, ``$2y$`` as Dovecot does) or
{ARGON2ID}. ``verify_password`` also reads {ARGON2I}, {PLAIN}, {SHA512-CRYPT},
{SHA256-CRYPT}, {MD5-CRYPT}, {SSHA} and {SSHA512}. Both are blocking (bcrypt costs
~50 ms): servers call them on a thread pool.
"""

import base64
import binascii
import hashlib
import hmac
import warnings

import bcrypt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError, VerifyMismatchError

try:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt as _crypt        # deprecated in 3.11, gone in 3.13
except ImportError:                   # pragma: no cover - depends on the Python build
    _crypt = None

__all__ = ["DEFAULT_SCHEME", "HASH_SCHEMES", "hash_password", "verify_password", "scheme_of"]

DEFAULT_SCHEME = "BLF-CRYPT"
HASH_SCHEMES = ("BLF-CRYPT", "ARGON2ID")     # the schemes hash_password can write
BCRYPT_COST = 10
_BCRYPT_MAX = 72                             # bcrypt reads at most 72 octets of a password

_argon2 = PasswordHasher()


def _utf8(password):
    return password.encode("utf-8") if isinstance(password, str) else bytes(password)


def scheme_of(stored):
    """'{BLF-CRYPT}$2y$...' -> ('BLF-CRYPT', '$2y$...'); ('', stored) without a scheme."""
    if stored.startswith("{"):
        end = stored.find("}")
        if end > 1:
            return stored[1:end].upper(), stored[end + 1:]
    return "", stored


def hash_password(password, scheme=DEFAULT_SCHEME):
    """Return ``password`` hashed as '{SCHEME}...' (BLF-CRYPT or ARGON2ID)."""
    scheme = scheme.upper()
    secret = _utf8(password)
    if scheme == "BLF-CRYPT":
        digest = bcrypt.hashpw(secret[:_BCRYPT_MAX], bcrypt.gensalt(BCRYPT_COST)).decode("ascii")
        return "{BLF-CRYPT}$2y$" + digest[4:]
    if scheme == "ARGON2ID":
        return "{ARGON2ID}" + _argon2.hash(secret)
    raise ValueError(f"{scheme!r}: cannot hash with this scheme (use one of {', '.join(HASH_SCHEMES)})")


def _verify_bcrypt(digest, secret):
    if digest[:4] not in ("$2a$", "$2b$", "$2y$"):
        return False
    try:
        return bcrypt.checkpw(secret[:_BCRYPT_MAX], ("$2b$" + digest[4:]).encode("ascii"))
    except (ValueError, UnicodeEncodeError):
        return False


def _verify_argon2(digest, secret, variant):
    if not digest.startswith(f"${variant}$"):
        return False
    try:
        return _argon2.verify(digest, secret)
    except (VerifyMismatchError, VerificationError, InvalidHashError, ValueError):
        return False


def _verify_crypt(digest, secret, prefix):
    if _crypt is None or not digest.startswith(prefix):
        return False
    try:
        computed = _crypt.crypt(secret.decode("utf-8"), digest)
    except (OSError, ValueError, UnicodeDecodeError):
        return False
    return computed is not None and hmac.compare_digest(computed.encode(), digest.encode())


def _verify_salted(digest, secret, algorithm, size):
    try:
        raw = base64.b64decode(digest, validate=True)
    except (binascii.Error, ValueError):
        return False
    if len(raw) <= size:
        return False
    expected, salt = raw[:size], raw[size:]
    return hmac.compare_digest(hashlib.new(algorithm, secret + salt).digest(), expected)


def verify_password(stored, password):
    """True when ``password`` matches the '{SCHEME}...' hash ``stored``; False otherwise,
    including for an unknown scheme or a malformed hash."""
    if not stored:
        return False
    scheme, digest = scheme_of(stored)
    secret = _utf8(password)
    if scheme == "BLF-CRYPT":
        return _verify_bcrypt(digest, secret)
    if scheme == "ARGON2ID":
        return _verify_argon2(digest, secret, "argon2id")
    if scheme == "ARGON2I":
        return _verify_argon2(digest, secret, "argon2i")
    if scheme == "SHA512-CRYPT":
        return _verify_crypt(digest, secret, "$6$")
    if scheme == "SHA256-CRYPT":
        return _verify_crypt(digest, secret, "$5$")
    if scheme == "MD5-CRYPT":
        return _verify_crypt(digest, secret, "$1$")
    if scheme == "SSHA":
        return _verify_salted(digest, secret, "sha1", 20)
    if scheme == "SSHA512":
        return _verify_salted(digest, secret, "sha512", 64)
    if scheme == "PLAIN":
        return hmac.compare_digest(_utf8(digest), secret)
    return False
