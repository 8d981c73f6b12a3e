"""The clamav filter: streams each message to clamd (INSTREAM, via pyclamd) at DATA.

pyclamd is blocking, so each scan runs on jdmail's thread pool. clamd answering
nothing, refusing the connection or timing out is an error: the framework applies the
filter's ``on_error`` (default tempfail), so mail is never let through unscanned
unless the admin says so. A message larger than ``max_size`` (or than clamd's
StreamMaxLength) is passed unscanned, with a log line.
"""

import socket
import struct

from twisted.logger import Logger
from zope.interface import implementer

from jdmail.interfaces import IFilter, IFilterFactory, Option, Stage, Verdict

CHUNK = 64 * 1024


class ClamdError(Exception):
    """clamd could not be reached or did not answer a scan."""


def _client(settings, timeout):
    """A pyclamd client whose socket sends whole chunks (pyclamd uses send(), which may
    send only part of one on a busy socket and so corrupt the INSTREAM framing)."""
    import pyclamd

    class SendAll:
        def __init__(self, sock):
            self._sock = sock

        def send(self, data):
            self._sock.sendall(data)
            return len(data)

        def __getattr__(self, name):
            return getattr(self._sock, name)

    def wrap(cls):
        class Client(cls):
            def _init_socket(self):
                super()._init_socket()
                self.clamd_socket = SendAll(self.clamd_socket)
        return Client

    try:
        if settings["host"]:
            return wrap(pyclamd.ClamdNetworkSocket)(settings["host"], settings["port"], timeout=timeout)
        return wrap(pyclamd.ClamdUnixSocket)(settings["socket"], timeout=timeout)
    except pyclamd.ConnectionError as e:
        raise ClamdError(f"cannot reach clamd: {e}") from None


def scan_file(settings, path, timeout):
    """Blocking: INSTREAM the file at ``path``; returns the virus name, None when clean,
    or "" when clamd refused it as too large."""
    import pyclamd
    client = _client(settings, timeout)
    try:
        with open(path, "rb") as f:
            result = client.scan_stream(f, chunk_size=CHUNK)
    except pyclamd.BufferTooLongError:
        return ""
    except (pyclamd.ConnectionError, socket.error, struct.error) as e:
        raise ClamdError(f"clamd scan failed: {e}") from None
    if not result:
        return None
    status, name = next(iter(result.values()))
    if status == "FOUND":
        return name
    raise ClamdError(f"clamd: {name}")


@implementer(IFilter)
class ClamAVFilter:
    """Scans at DATA; on a virus: reject (554 5.7.0 with the virus name), quarantine or
    tag (X-Virus-Status header); optionally tells ``notify`` about it."""

    log = Logger()
    stages = frozenset({Stage.DATA})

    def __init__(self, name, settings, services):
        self.name, self.settings, self.services = name, settings, services
        self.timeout = settings.get("timeout") or services.config["filters"]["timeout"]

    async def check(self, stage, txn):
        s = self.settings
        if s["max_size"] and txn.size > s["max_size"]:
            return Verdict(reason=f"not scanned: {txn.size} octets > max_size {s['max_size']}")
        virus = await self.services.run_blocking(scan_file, s, txn.message_path, self.timeout)
        if virus == "":
            return Verdict(reason="not scanned: clamd's StreamMaxLength exceeded")
        if virus is None:
            return Verdict.CONTINUE
        header = ("X-Virus-Status", f"Infected ({virus})")
        if s["notify"]:
            from twisted.internet.defer import ensureDeferred
            from jdmail.filters.notice import send_notice
            rcpts = ", ".join(a for a, _r in txn.recipients)
            ensureDeferred(send_notice(
                self.services, s["notify"], f"Virus found: {virus}",
                f"jdmail on {self.services.hostname} found the virus {virus} in a message.\n\n"
                f"Queue id: {txn.queue_id}\nClient: {txn.client_ip} (HELO {txn.helo})\n"
                f"Sender: <{txn.sender}>\nRecipients: {rcpts}\nAction: {s['on_virus']}\n"))
        reason = f"virus {virus}"
        if s["on_virus"] == "reject":
            return Verdict.reject(f"Virus found: {virus}", code=554, enhanced="5.7.0", reason=reason)
        if s["on_virus"] == "quarantine":
            return Verdict.quarantine(reason=reason, headers=(header,))
        return Verdict.add_headers(header, reason=reason)


@implementer(IFilterFactory)
class ClamAVFilterFactory:
    kind = "clamav"
    description = "Scan each message with clamd (INSTREAM); reject, quarantine or tag viruses."
    options = {
        "socket": Option.str(default="/run/clamav/clamd.ctl", help="clamd's unix socket (when host is empty)"),
        "host": Option.str(default="", help="clamd's TCP address; empty = use socket"),
        "port": Option.int(default=3310, help="clamd's TCP port (with host)"),
        "on_virus": Option.choice(("reject", "quarantine", "tag"), default="reject",
                                  help="reject (554 5.7.0), quarantine, or tag with X-Virus-Status"),
        "notify": Option.str(default="", help="address told about each virus found (e.g. postmaster@…); "
                                              "empty = nobody"),
        "max_size": Option.size(default=25 * 1024**2, help="larger messages are passed unscanned "
                                                           "(keep at most clamd's StreamMaxLength); 0 = no limit"),
    }

    def build(self, name, settings, services):
        import pyclamd  # noqa: F401  (a missing library is a startup error, not a tempfail per message)
        if not 0 < settings["port"] < 65536:
            raise ValueError(f"port {settings['port']} is not a TCP port")
        return ClamAVFilter(name, settings, services)
