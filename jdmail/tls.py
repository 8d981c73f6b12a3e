"""TLS for every listener: the admin's certificate, or a self-signed one made on first start."""

import datetime
import os

from twisted.internet import ssl
from twisted.logger import Logger

from jdmail.errors import ConfigError

log = Logger()


def _generate_self_signed(hostname, cert_path, key_path):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, hostname[:64])])
    now = datetime.datetime.now(datetime.timezone.utc)
    san = [x509.DNSName(hostname)]
    cert = (
        x509.CertificateBuilder()
        .subject_name(name).issuer_name(name).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(days=1))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .add_extension(x509.SubjectAlternativeName(san), critical=False)
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    os.makedirs(os.path.dirname(key_path), mode=0o700, exist_ok=True)
    fd = os.open(key_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    with open(cert_path, "wb") as f:
        f.write(cert.public_bytes(serialization.Encoding.PEM))


def context_factory(config):
    """Return Twisted CertificateOptions for the [tls] settings.

    With no cert configured, ``<datadir>/tls/selfsigned.{crt,key}`` is used and
    created (with a warning) when missing. Raises ConfigError for unreadable files.
    """
    tls = config["tls"]
    cert_path, key_path = tls["cert"], tls["key"] or tls["cert"]
    if not cert_path:
        cert_path = os.path.join(config.datadir, "tls", "selfsigned.crt")
        key_path = os.path.join(config.datadir, "tls", "selfsigned.key")
        if not (os.path.exists(cert_path) and os.path.exists(key_path)):
            _generate_self_signed(config.hostname, cert_path, key_path)
            log.warn("tls: no [tls] cert configured; generated a self-signed certificate for "
                     "{hostname} at {path} (clients will warn until you install a real one)",
                     hostname=config.hostname, path=cert_path)
    try:
        with open(cert_path, "rb") as f:
            cert_pem = f.read()
        with open(key_path, "rb") as f:
            key_pem = f.read()
    except OSError as e:
        raise ConfigError(f"cannot read {e.filename}: {e.strerror}", config.path, "tls",
                          "cert" if e.filename == cert_path else "key") from None
    try:
        from OpenSSL import crypto
        key = crypto.load_privatekey(crypto.FILETYPE_PEM, key_pem)
        certs = _certificates(cert_pem)
        return ssl.CertificateOptions(privateKey=key, certificate=certs[0], extraCertChain=certs[1:],
                                      raiseMinimumTo=ssl.TLSVersion.TLSv1_2)
    except Exception as e:  # OpenSSL's errors are many; the admin needs one line
        raise ConfigError(f"not a usable PEM certificate and key: {e}", config.path, "tls", "cert") from None


def _certificates(pem):
    """Every certificate in a PEM file, leaf first."""
    from OpenSSL import crypto
    marker = b"-----BEGIN CERTIFICATE-----"
    parts = [marker + p for p in pem.split(marker)[1:]]
    if not parts:
        raise ValueError("no certificate found")
    return [crypto.load_certificate(crypto.FILETYPE_PEM, p) for p in parts]
