"""jdmail.workers.logrelay: a worker's JSON log records, as its stdout delivers them
(in any chunks), published again in the master with the worker's name."""

import io

from twisted.logger import Logger, LogLevel, formatEvent, jsonFileLogObserver
from twisted.trial import unittest

from jdmail.workers.logrelay import LogRelay


def worker_output(*emit):
    """What a worker writes to stdout for the log calls ``emit`` makes on a Logger."""
    out = io.StringIO()
    log = Logger(namespace="jdmail.smtp.server", observer=jsonFileLogObserver(out))
    for call in emit:
        call(log)
    return out.getvalue().encode("utf-8")


class LogRelayTests(unittest.TestCase):

    def setUp(self):
        self.events = []
        self.relay = LogRelay("worker-1", self.events.append)

    def test_records_in_small_chunks(self):
        data = worker_output(
            lambda log: log.info("smtp transaction id={id} result={result}", id="ABC", result="accepted"),
            lambda log: log.warn("second {n}", n=2))
        for i in range(0, len(data), 7):
            self.relay.feed(data[i:i + 7])
        self.assertEqual([formatEvent(e) for e in self.events],
                         ["smtp transaction id=ABC result=accepted", "second 2"])
        self.assertEqual([e["log_level"] for e in self.events], [LogLevel.info, LogLevel.warn])
        self.assertEqual({e["log_system"] for e in self.events}, {"worker-1"})
        self.assertEqual({e["log_namespace"] for e in self.events}, {"jdmail.smtp.server"})

    def test_failure_keeps_its_traceback(self):
        def fail(log):
            try:
                1 / 0
            except ZeroDivisionError:
                log.failure("smtp internal error client={client}", client="192.0.2.1")
        self.relay.feed(worker_output(fail))
        [event] = self.events
        self.assertEqual(formatEvent(event), "smtp internal error client=192.0.2.1")
        self.assertIn("ZeroDivisionError", event["log_failure"].getTraceback())

    def test_text_that_is_not_a_record(self):
        self.relay.feed(b"stray output\nmore")
        self.assertEqual([formatEvent(e) for e in self.events], ["stray output"])
        self.relay.flush()
        self.assertEqual([formatEvent(e) for e in self.events], ["stray output", "more"])
        self.assertEqual(self.events[0]["log_level"], LogLevel.warn)
        self.assertEqual(self.events[0]["log_system"], "worker-1")
