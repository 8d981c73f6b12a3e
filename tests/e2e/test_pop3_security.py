"""POP3 STLS command injection: plaintext pipelined after STLS is never run inside TLS."""

import socket
import ssl

from twisted.trial.unittest import TestCase

from tests.fixtures.server import running_server


def read_line(sock, buf=b""):
    while b"\r\n" not in buf:
        chunk = sock.recv(4096)
        if not chunk:
            break
        buf += chunk
    line, _, rest = buf.partition(b"\r\n")
    return line, rest


class STLSInjectionTests(TestCase):
    def test_commands_pipelined_with_stls_are_discarded(self):
        server = running_server(self)
        raw = socket.create_connection(("127.0.0.1", server.ports["pop3"]), timeout=10)
        greeting, rest = read_line(raw)
        self.assertTrue(greeting.startswith(b"+OK"), greeting)
        raw.sendall(b"STLS\r\nUSER bob@example.org\r\n")
        reply, rest = read_line(raw, rest)
        self.assertTrue(reply.startswith(b"+OK"), reply)
        self.assertEqual(rest, b"", "nothing answered to the injected USER in plaintext")
        tls = ssl._create_unverified_context().wrap_socket(raw, server_hostname="mail.test")
        # If the injected USER had been run, PASS would be accepted now.
        tls.sendall(b"PASS secret\r\n")
        reply, rest = read_line(tls)
        self.assertTrue(reply.startswith(b"-ERR"), reply)
        tls.sendall(b"USER bob@example.org\r\nPASS secret\r\n")
        user_reply, rest = read_line(tls, rest)
        pass_reply, rest = read_line(tls, rest)
        self.assertTrue(user_reply.startswith(b"+OK"), user_reply)
        self.assertTrue(pass_reply.startswith(b"+OK"), pass_reply)
        tls.sendall(b"QUIT\r\n")
        tls.close()
