"""A worker's log events, written by it as JSON lines on its stdout
(twisted.logger.jsonFileLogObserver), published again in the master so every
observer there (the twistd log file, ``[jdmail] log_file``) has them."""

from twisted.logger import Logger, LogLevel, eventFromJSON, globalLogPublisher

log = Logger()
MAX_LINE = 1024 * 1024      # a record longer than this is cut (a runaway print)


class LogRelay:
    """Feed it a worker's stdout bytes; each complete record is published with
    ``log_system`` naming the worker. Text that is not a JSON record (a stray write to
    fd 1) is logged as it is, one event per line."""

    def __init__(self, system, publisher=globalLogPublisher):
        self.system, self.publish = system, publisher
        self._buffer = b""

    def feed(self, data):
        self._buffer += data
        if b"\n" not in self._buffer:
            if len(self._buffer) > MAX_LINE:
                self._line(self._buffer)
                self._buffer = b""
            return
        *lines, self._buffer = self._buffer.split(b"\n")
        for line in lines:
            self._line(line)

    def flush(self):
        """Publish what is left (the worker ended)."""
        if self._buffer:
            self._line(self._buffer)
            self._buffer = b""

    def _line(self, line):
        text = line.decode("utf-8", "replace").strip("\x1e \r")
        if not text:
            return
        event = None
        if text.startswith("{"):
            try:
                event = eventFromJSON(text)
            except ValueError:
                event = None
        if not isinstance(event, dict) or "log_format" not in event:
            event = {"log_format": "{line}", "line": text, "log_level": LogLevel.warn,
                     "log_namespace": "jdmail.workers", "log_time": None}
            import time
            event["log_time"] = time.time()
        event["log_system"] = self.system
        self.publish(event)
