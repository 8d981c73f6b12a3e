"""A worker writes its own log lines into the master's log files, so a line is in the
file before the client has the reply it goes with, and the master does not decode and
re-format every worker event (jdmail.workers.logrelay is what remains for a master
that logs elsewhere: stdout, syslog).

Both ends append (O_APPEND: every line one write, never over another process's line).
The master turns the twistd log file (twisted.python.logfile.LogFile, which opens it
for writing at its own offset and counts only its own bytes towards rotation) into an
appending one and rotates it by the file's real size (``MasterLogFiles``); a worker
opens the file again when the path names another file (rotated, by size or SIGUSR1)."""

import fcntl
import os

from twisted.logger import (FileLogObserver, formatEventAsClassicLogText, formatTime, globalLogPublisher,
                            timeFormatRFC3339)
from twisted.python.logfile import BaseLogFile

ROTATE_CHECK = 1.0          # seconds between the master's looks at the log files' sizes


def _append_mode(fileobj):
    fd = fileobj.fileno()
    fcntl.fcntl(fd, fcntl.F_SETFL, fcntl.fcntl(fd, fcntl.F_GETFL) | os.O_APPEND)


class MasterLogFiles:
    """The master's file log observers, found in ``publisher``: ``paths`` for the
    workers to write to, or None when some observer is not a file (the workers then
    send their events to the master, jdmail.workers.logrelay)."""

    def __init__(self, publisher=globalLogPublisher):
        self.rotating = []          # twistd's LogFile objects
        paths = []
        for observer in list(getattr(publisher, "_observers", ())):
            out = getattr(observer, "_outFile", None) if isinstance(observer, FileLogObserver) else None
            if isinstance(out, BaseLogFile):
                paths.append(os.path.abspath(out.path))
                self.rotating.append(out)
            elif isinstance(getattr(out, "name", None), str) and os.path.isfile(out.name):
                paths.append(os.path.abspath(out.name))       # [jdmail] log_file, opened "a"
            else:
                paths = None
                break
        self.paths = paths
        if paths:
            for logfile in self.rotating:
                self._appending(logfile)

    @staticmethod
    def _appending(logfile):
        """Make ``logfile`` append now and after every reopen (rotation)."""
        _append_mode(logfile._file)
        reopen = logfile._openFile

        def open_appending():
            reopen()
            _append_mode(logfile._file)
        logfile._openFile = open_appending

    def check_rotation(self):
        """Rotate a twistd log file that the workers' lines took past its rotate length."""
        for logfile in self.rotating:
            try:
                logfile.size = os.fstat(logfile._file.fileno()).st_size
                if logfile.shouldRotate():
                    logfile.rotate()
            except (OSError, ValueError):
                pass            # closed meanwhile (the server stops): nothing to rotate


class AppendingFile:
    """One log file, opened for appending; opened again when its path names another
    file than the one open (it was rotated or removed)."""

    def __init__(self, path):
        self.path = path
        self.fd = None
        self._open()

    def _open(self):
        if self.fd is not None:
            os.close(self.fd)
        self.fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_CLOEXEC, 0o644)
        st = os.fstat(self.fd)
        self.identity = (st.st_dev, st.st_ino)

    def write(self, data):
        try:
            st = os.stat(self.path)
            if (st.st_dev, st.st_ino) != self.identity:
                self._open()
        except FileNotFoundError:
            self._open()
        while data:
            data = data[os.write(self.fd, data):]

    def close(self):
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


class WorkerLogObserver:
    """Writes a worker's events as the master would write them had it relayed them:
    twistd's text format, ``[<system>]`` naming the worker."""

    def __init__(self, system, paths):
        self.system = system
        self.files = [AppendingFile(p) for p in paths]
        self._time = (None, "")

    def _format_time(self, when):
        """twistd's timestamp (whole seconds), made once per second."""
        if when is None:
            return formatTime(when, timeFormatRFC3339)
        second = int(when)
        if self._time[0] != second:
            self._time = (second, formatTime(second, timeFormatRFC3339))
        return self._time[1]

    def __call__(self, event):
        event = dict(event, log_system=self.system)
        text = formatEventAsClassicLogText(event, formatTime=self._format_time)
        if not text:
            return
        data = text.encode("utf-8")
        for f in self.files:
            try:
                f.write(data)
            except OSError:
                pass            # a full disk: the line is lost, as the master's would be

    def close(self):
        for f in self.files:
            f.close()
