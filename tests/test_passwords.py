"""jdmail.passwords: Dovecot {SCHEME} hashes."""

import base64
import hashlib
import os
import warnings

from twisted.trial.unittest import TestCase

from jdmail import passwords
from jdmail.passwords import DEFAULT_SCHEME, hash_password, verify_password

try:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        import crypt
except ImportError:  # pragma: no cover
    crypt = None

NEEDS_CRYPT = None if crypt is not None else "the crypt module is not available"


class HashTests(TestCase):

    def test_default_is_bcrypt_2y(self):
        self.assertEqual(DEFAULT_SCHEME, "BLF-CRYPT")
        stored = hash_password("correct horse")
        self.assertTrue(stored.startswith("{BLF-CRYPT}$2y$10$"), stored)
        self.assertEqual(len(stored), len("{BLF-CRYPT}") + 60)
        self.assertTrue(verify_password(stored, "correct horse"))
        self.assertFalse(verify_password(stored, "correct horsf"))
        self.assertFalse(verify_password(stored, ""))

    def test_bcrypt_salted(self):
        self.assertNotEqual(hash_password("same"), hash_password("same"))

    def test_argon2id(self):
        stored = hash_password("pässword", "ARGON2ID")
        self.assertTrue(stored.startswith("{ARGON2ID}$argon2id$v=19$"), stored)
        self.assertTrue(verify_password(stored, "pässword"))
        self.assertFalse(verify_password(stored, "passwort"))

    def test_unknown_hash_scheme(self):
        self.assertRaises(ValueError, hash_password, "x", "MD4")

    def test_long_bcrypt_password(self):
        # bcrypt reads 72 octets; longer passwords must not crash either way
        long = "a" * 100
        stored = hash_password(long)
        self.assertTrue(verify_password(stored, long))
        self.assertFalse(verify_password(stored, "b" * 100))


class VerifyTests(TestCase):

    def test_bcrypt_prefixes(self):
        import bcrypt
        digest = bcrypt.hashpw(b"s3cret", bcrypt.gensalt(4)).decode()
        self.assertTrue(digest.startswith("$2b$"))
        for prefix in ("$2a$", "$2b$", "$2y$"):
            stored = "{BLF-CRYPT}" + prefix + digest[4:]
            self.assertTrue(verify_password(stored, "s3cret"), prefix)
            self.assertFalse(verify_password(stored, "s3creT"), prefix)
        self.assertFalse(verify_password("{BLF-CRYPT}$2x$" + digest[4:], "s3cret"))

    def test_argon2i(self):
        from argon2 import PasswordHasher, Type
        stored = "{ARGON2I}" + PasswordHasher(type=Type.I).hash("s3cret")
        self.assertTrue(stored.startswith("{ARGON2I}$argon2i$"))
        self.assertTrue(verify_password(stored, "s3cret"))
        self.assertFalse(verify_password(stored, "wrong"))
        # the scheme must match the hash's variant
        self.assertFalse(verify_password("{ARGON2ID}" + stored[len("{ARGON2I}"):], "s3cret"))

    def test_plain(self):
        self.assertTrue(verify_password("{PLAIN}s3cret", "s3cret"))
        self.assertFalse(verify_password("{PLAIN}s3cret", "s3cre"))
        self.assertTrue(verify_password("{plain}ünï", "ünï"))

    def test_ssha(self):
        salt = os.urandom(8)
        value = base64.b64encode(hashlib.sha1(b"s3cret" + salt).digest() + salt).decode()
        self.assertTrue(verify_password("{SSHA}" + value, "s3cret"))
        self.assertFalse(verify_password("{SSHA}" + value, "s3cret "))

    def test_ssha_known_vector(self):
        # (printf secretsalt | openssl dgst -sha1 -binary; printf salt) | base64
        value = base64.b64encode(hashlib.sha1(b"secretsalt").digest() + b"salt").decode()
        self.assertEqual(value, "gVK8WC9YyFT1gMsQHTGCgT3sSv5zYWx0")
        self.assertTrue(verify_password("{SSHA}" + value, "secret"))

    def test_ssha512(self):
        salt = os.urandom(16)
        value = base64.b64encode(hashlib.sha512("pässword".encode() + salt).digest() + salt).decode()
        self.assertTrue(verify_password("{SSHA512}" + value, "pässword"))
        self.assertFalse(verify_password("{SSHA512}" + value, "password"))
        # a SHA-1 sized digest is not a SHA-512 one
        short = base64.b64encode(hashlib.sha1(b"x" + salt).digest() + salt).decode()
        self.assertFalse(verify_password("{SSHA512}" + short, "x"))

    def test_sha512_crypt_known_vector(self):
        # Ulrich Drepper's SHA-crypt specification, test vector 1
        stored = ("{SHA512-CRYPT}$6$saltstring$svn8UoSVapNtMuq1ukKS4tPQd8iKwSMHWjl/O817G3uBnIFNjnQ"
                  "JuesI68u4OTLiBFdcbYEdFCoEOfaS35inz1")
        self.assertTrue(verify_password(stored, "Hello world!"))
        self.assertFalse(verify_password(stored, "Hello world"))
    test_sha512_crypt_known_vector.skip = NEEDS_CRYPT

    def test_sha512_crypt_computed(self):
        digest = crypt.crypt("s3cret", crypt.mksalt(crypt.METHOD_SHA512))
        self.assertTrue(verify_password("{SHA512-CRYPT}" + digest, "s3cret"))
        self.assertFalse(verify_password("{SHA512-CRYPT}" + digest, "s3creT"))
        # a $6$ hash under another crypt scheme is refused
        self.assertFalse(verify_password("{SHA256-CRYPT}" + digest, "s3cret"))
    test_sha512_crypt_computed.skip = NEEDS_CRYPT

    def test_sha256_crypt_known_vector(self):
        stored = "{SHA256-CRYPT}$5$saltstring$5B8vYYiY.CVt1RlTTf8KbXBH3hsxY/GNooZaBBGWEc5"
        self.assertTrue(verify_password(stored, "Hello world!"))
        self.assertFalse(verify_password(stored, "hello world!"))
    test_sha256_crypt_known_vector.skip = NEEDS_CRYPT

    def test_md5_crypt_known_vector(self):
        # openssl passwd -1 -salt saltsalt 'Hello world!'
        stored = "{MD5-CRYPT}$1$saltsalt$le8lFSqqnPaRFOlmAZpvH1"
        self.assertTrue(verify_password(stored, "Hello world!"))
        self.assertFalse(verify_password(stored, "Hello world?"))
    test_md5_crypt_known_vector.skip = NEEDS_CRYPT

    def test_without_crypt_module(self):
        self.patch(passwords, "_crypt", None)
        stored = "{MD5-CRYPT}$1$saltsalt$le8lFSqqnPaRFOlmAZpvH1"
        self.assertFalse(verify_password(stored, "Hello world!"))

    def test_unknown_and_malformed(self):
        self.assertFalse(verify_password("{MD4}abc", "abc"))
        self.assertFalse(verify_password("abc", "abc"))            # no scheme
        self.assertFalse(verify_password("", ""))
        self.assertFalse(verify_password("{SSHA}not base64!!", "x"))
        self.assertFalse(verify_password("{BLF-CRYPT}$2y$10$short", "x"))
        self.assertFalse(verify_password("{ARGON2ID}$argon2id$garbage", "x"))
        self.assertFalse(verify_password("{SHA512-CRYPT}$6$", "x"))
