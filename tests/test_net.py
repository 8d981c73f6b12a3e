"""jdmail.net.write_now: replies written straight to the socket keep their order and
survive a full socket buffer (the rest goes through transport.write)."""

from twisted.internet import defer, protocol, reactor
from twisted.trial import unittest

from jdmail.net import write_now


class _Sink(protocol.Protocol):
    def connectionMade(self):
        self.factory.data = bytearray()
        self.factory.connected.callback(self)

    def dataReceived(self, data):
        self.factory.data += data
        if len(self.factory.data) >= self.factory.expect and not self.factory.done.called:
            self.factory.done.callback(bytes(self.factory.data))


class _Server(protocol.Protocol):
    def connectionMade(self):
        self.factory.server.callback(self)


class WriteNowTests(unittest.TestCase):

    @defer.inlineCallbacks
    def _pair(self, expect):
        sf = protocol.ServerFactory()
        sf.protocol = _Server
        sf.server = defer.Deferred()
        port = reactor.listenTCP(0, sf, interface="127.0.0.1")
        self.addCleanup(port.stopListening)
        cf = protocol.ClientFactory()
        cf.protocol = _Sink
        cf.connected, cf.done, cf.expect = defer.Deferred(), defer.Deferred(), expect
        reactor.connectTCP("127.0.0.1", port.getHost().port, cf)
        client = yield cf.connected
        server = yield sf.server
        self.addCleanup(client.transport.loseConnection)
        self.addCleanup(server.transport.loseConnection)
        return server, cf

    @defer.inlineCallbacks
    def test_small_replies_in_order(self):
        server, cf = yield self._pair(3 * 6)
        write_now(server.transport, b"one\r\n\r\n")
        self.assertEqual(server.transport._tempDataLen, 0, "not sent at once")
        server.transport.write(b"two\r\n")      # buffered: the next write_now must queue behind it
        write_now(server.transport, b"three\r\n")
        got = yield cf.done
        self.assertEqual(got, b"one\r\n\r\ntwo\r\nthree\r\n")

    @defer.inlineCallbacks
    def test_more_than_the_socket_takes(self):
        big = bytes(range(256)) * (64 * 1024)      # 16 MB: more than any socket buffer
        server, cf = yield self._pair(len(big) + 4)
        write_now(server.transport, big)
        self.assertTrue(server.transport._tempDataLen or server.transport.dataBuffer,
                        "the kernel took 16 MB at once: nothing left to buffer")
        write_now(server.transport, b"tail")
        got = yield cf.done
        self.assertEqual(len(got), len(big) + 4)
        self.assertTrue(got == big + b"tail")
