"""A small non-blocking client for spamd's protocol (SPAMC/1.5), on Twisted.

One request per connection, as spamc does: ``SYMBOLS SPAMC/1.5`` with
Content-length (and User when given), the message, then spamd answers
``SPAMD/1.1 0 EX_OK``, a ``Spam: True ; 6.1 / 5.0`` header and the comma-separated
names of the rules that hit, and closes. CHECK gives the same without the rule
names; PROCESS gives the message as SpamAssassin rewrote it (its X-Spam-* headers,
and with its report_safe setting spam wrapped as an attachment) in ``message``.
"""

from dataclasses import dataclass

from twisted.internet import protocol
from twisted.internet.defer import Deferred

COMMANDS = ("CHECK", "SYMBOLS", "PROCESS")
MAX_RESPONSE = 1024 * 1024


class SpamdError(Exception):
    """spamd could not be reached, or answered with an error or nonsense."""


@dataclass(frozen=True)
class SpamdResult:
    spam: bool          # spamd's own verdict at its required score
    score: float
    threshold: float    # spamd's required score
    symbols: tuple      # rule names (SYMBOLS only)
    message: bytes = b""    # the rewritten message (PROCESS only)


def parse_response(data, command="SYMBOLS"):
    """SpamdResult from spamd's whole answer (bytes); SpamdError when it is not one."""
    head, sep, body = data.partition(b"\r\n\r\n")
    if not sep:
        raise SpamdError(f"incomplete answer from spamd: {data[:80]!r}")
    lines = head.decode("latin-1").split("\r\n")
    status = lines[0].split(None, 2)
    if len(status) < 2 or not status[0].startswith("SPAMD/"):
        raise SpamdError(f"not a spamd answer: {lines[0][:80]!r}")
    if status[1] != "0":
        raise SpamdError(f"spamd error: {lines[0][:120]}")
    headers = {}
    for line in lines[1:]:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    spam = headers.get("spam")
    if spam is None:
        raise SpamdError("spamd's answer has no Spam header")
    try:
        flag, _, scores = spam.partition(";")
        score, _, threshold = scores.partition("/")
        result = SpamdResult(flag.strip().lower() in ("true", "yes"), float(score), float(threshold), ())
    except ValueError:
        raise SpamdError(f"cannot read spamd's Spam header {spam!r}") from None
    length = headers.get("content-length")
    if length is not None and length.isdigit():
        body = body[:int(length)]
    if command == "PROCESS":
        return SpamdResult(result.spam, result.score, result.threshold, (), body)
    if command == "SYMBOLS":
        names = tuple(n.strip() for n in body.decode("latin-1").split(",") if n.strip())
        result = SpamdResult(result.spam, result.score, result.threshold, names)
    return result


class _SpamcProtocol(protocol.Protocol):
    def __init__(self, request, done):
        self.request, self.done, self.data = request, done, []
        self.size = 0

    def connectionMade(self):
        self.transport.write(self.request)

    def dataReceived(self, data):
        self.size += len(data)
        if self.size > MAX_RESPONSE:
            self.transport.abortConnection()
            return
        self.data.append(data)

    def connectionLost(self, reason):
        if not self.done.called:
            self.done.callback(b"".join(self.data))


class _Factory(protocol.ClientFactory):
    noisy = False

    def __init__(self, request, done):
        self.request, self.done = request, done

    def buildProtocol(self, addr):
        return _SpamcProtocol(self.request, self.done)


async def spamc(endpoint, message, command="SYMBOLS", user=""):
    """Ask spamd (a Twisted client endpoint) about ``message`` (bytes); a SpamdResult.
    Cancelling the call (the filter's timeout) drops the connection."""
    if command not in COMMANDS:
        raise ValueError(f"unsupported spamd command {command!r}")
    head = f"{command} SPAMC/1.5\r\nContent-length: {len(message)}\r\n"
    if user:
        head += f"User: {user}\r\n"
    request = head.encode("utf-8") + b"\r\n" + message
    protocols = []

    def cancel(_d):
        for p in protocols:
            if p.transport is not None:
                p.transport.abortConnection()

    done = Deferred(cancel)
    factory = _Factory(request, done)
    try:
        proto = await endpoint.connect(factory)
    except Exception as e:
        raise SpamdError(f"cannot reach spamd: {e}") from None
    protocols.append(proto)
    data = await done
    return parse_response(data, command)
