"""Worker processes: the server process (the master) binds the listening ports and hands
them to N workers that accept and serve SMTP, POP3 and IMAP themselves; what must stay
in one place (connection limits, IMAP sessions per user, the queue runner, change
notices between processes, the log) is asked of or told to the master over a control
channel per worker (jdmail.workers.protocol)."""
