"""jdmail.workers.logfiles: workers append their lines to the master's log files (a
twistd LogFile, a [jdmail] log_file), in the master's format; the master rotates by
the file's real size and a worker follows the rotation."""

import os

from twisted.logger import FileLogObserver, Logger, LogPublisher, textFileLogObserver
from twisted.python.logfile import LogFile
from twisted.trial import unittest

from jdmail.workers.logfiles import MasterLogFiles, WorkerLogObserver


class LogFilesTests(unittest.TestCase):

    def setUp(self):
        self.dir = self.mktemp()
        os.makedirs(self.dir)
        self.path = os.path.join(self.dir, "twistd.log")

    def master(self, rotate_length=1000000, extra=()):
        """A master's publisher with twistd's file observer (and ``extra`` observers)."""
        self.logfile = LogFile("twistd.log", self.dir, rotateLength=rotate_length)
        self.addCleanup(self.logfile.close)
        publisher = LogPublisher(textFileLogObserver(self.logfile), *extra)
        return publisher, MasterLogFiles(publisher)

    def worker(self, paths, name="worker-1"):
        observer = WorkerLogObserver(name, paths)
        self.addCleanup(observer.close)
        return Logger(namespace="jdmail.smtp.server", observer=observer)

    def read(self, path=None):
        with open(path or self.path, encoding="utf-8") as f:
            return f.read()

    def test_lines_of_master_and_worker_never_overwrite_each_other(self):
        publisher, files = self.master()
        self.assertEqual(files.paths, [os.path.abspath(self.path)])
        master = Logger(namespace="jdmail.service", observer=publisher)
        worker = self.worker(files.paths)
        for i in range(3):
            master.info("master line {i}", i=i)
            worker.info("smtp transaction id={id} result=accepted", id=f"Q{i}")
        lines = self.read().splitlines()
        self.assertEqual([line.split(" ", 1)[1] for line in lines], [
            "[jdmail.service#info] master line 0", "[worker-1] smtp transaction id=Q0 result=accepted",
            "[jdmail.service#info] master line 1", "[worker-1] smtp transaction id=Q1 result=accepted",
            "[jdmail.service#info] master line 2", "[worker-1] smtp transaction id=Q2 result=accepted"])
        self.assertRegex(lines[1], r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d[+-]\d{4} \[worker-1\] ")

    def test_master_rotates_by_the_real_size_and_the_worker_follows(self):
        publisher, files = self.master(rotate_length=300)
        master = Logger(namespace="jdmail.service", observer=publisher)
        worker = self.worker(files.paths)
        for i in range(5):
            worker.info("smtp transaction id={id} result=accepted padding={p}", id=f"Q{i}", p="x" * 40)
        files.check_rotation()
        self.assertTrue(os.path.exists(self.path + ".1"), "the workers' lines took it past 300 bytes")
        self.assertIn("id=Q4 ", self.read(self.path + ".1"))
        worker.info("smtp transaction id={id} result=accepted", id="AFTER")
        master.info("master after")
        now = self.read()
        self.assertIn("id=AFTER ", now)
        self.assertIn("master after", now)
        self.assertNotIn("id=Q0 ", now)
        files.check_rotation()
        self.assertFalse(os.path.exists(self.path + ".2"), "under the length: not rotated again")

    def test_plain_log_file_is_written_too(self):
        extra = os.path.join(self.dir, "jdmail.log")
        f = open(extra, "a", encoding="utf-8")
        self.addCleanup(f.close)
        _publisher, files = self.master(extra=[textFileLogObserver(f)])
        self.assertEqual(files.paths, [os.path.abspath(self.path), os.path.abspath(extra)])
        self.worker(files.paths).info("hello {who}", who="both")
        self.assertIn("[worker-1] hello both", self.read())
        self.assertIn("[worker-1] hello both", self.read(extra))

    def test_an_observer_that_is_no_file_means_relaying(self):
        for other in (lambda event: None, FileLogObserver(_Stdout(), lambda event: "x\n")):
            _publisher, files = self.master(extra=[other])
            self.assertIsNone(files.paths)


class _Stdout:
    name = "<stdout>"

    def write(self, text):
        pass

    def flush(self):
        pass
