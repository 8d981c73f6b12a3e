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
    cert_path = os.path.expanduser(tls["cert"]) if tls["cert"] else ""
    key_path = os.path.expanduser(tls["key"]) if tls["key"] else cert_path
    if tls["key"] and not cert_path:
        raise ConfigError("is set but [tls] cert is not: give both (or neither, for a "
                          "self-signed certificate)", config.path, "tls", "key")
    if not cert_path:
        cert_path = os.path.join(config.datadir, "tls", "selfsigned.crt")
        key_path = os.path.join(config.datadir, "tls", "selfsigned.key")
        if not (os.path.exists(cert_path) and os.path.exists(key_path)):
            try:
                _generate_self_signed(config.hostname, cert_path, key_path)
            except Exception as e:
                raise ConfigError(f"no certificate configured, and a self-signed one cannot be "
                                  f"made at {cert_path}: {e}", config.path, "tls", "cert") from None
            log.warn("tls: no [tls] cert configured; generated a self-signed certificate for "
                     "{hostname} at {path} (clients will warn until you install a real one)",
                     hostname=config.hostname, path=cert_path)
    files = {}
    for key, path in (("cert", cert_path), ("key", key_path)):
        try:
            with open(path, "rb") as f:
                files[key] = f.read()
        except OSError as e:
            raise ConfigError(f"{path!r}: cannot read: {e.strerror or e}", config.path, "tls",
                              key if tls[key] or key == "cert" else "cert") from None
    try:
        from OpenSSL import crypto
        certs = _certificates(files["cert"])
    except Exception as e:  # OpenSSL's errors are many; the admin needs one line
        raise ConfigError(f"{cert_path!r}: not a usable PEM certificate: {_describe(e)}",
                          config.path, "tls", "cert") from None
    try:
        key = crypto.load_privatekey(crypto.FILETYPE_PEM, files["key"])
    except Exception as e:
        raise ConfigError(f"{key_path!r}: not a usable PEM private key (an encrypted key is not "
                          f"supported): {_describe(e)}", config.path, "tls",
                          "key" if tls["key"] else "cert") from None
    try:
        options = ssl.CertificateOptions(privateKey=key, certificate=certs[0], extraCertChain=certs[1:],
                                         raiseMinimumTo=ssl.TLSVersion.TLSv1_2)
        options.getContext()        # checks that key and certificate belong together, now
    except Exception as e:
        raise ConfigError(f"{cert_path!r} and {key_path!r} do not make a usable TLS setup "
                          f"(does the key belong to the certificate?): {_describe(e)}",
                          config.path, "tls", "key" if tls["key"] else "cert") from None
    return options


def _describe(error):
    """One line for an exception, including OpenSSL's error-queue texts."""
    args = getattr(error, "args", ())
    if args and isinstance(args[0], list):
        parts = [t[-1] for t in args[0] if isinstance(t, tuple) and t]
        if parts:
            return "; ".join(str(p) for p in parts)
    text = " ".join(str(error).split())
    return text or type(error).__name__


def _certificates(pem):
    """Every certificate in a PEM file, leaf first."""
    from OpenSSL import crypto
    marker = b"-----BEGIN CERTIFICATE-----"
    parts = [marker + p for p in pem.split(marker)[1:]]
    if not parts:
        raise ValueError("no certificate found")
    return [crypto.load_certificate(crypto.FILETYPE_PEM, p) for p in parts]
