"""Worker processes: the server process (the master) binds the listening ports and hands
them to N workers that accept and serve SMTP, POP3 and IMAP themselves; what must stay
in one place (connection limits, IMAP sessions per user, the queue runner, change
notices between processes) is asked of or told to the master over a control channel
per worker (jdmail.workers.protocol); SMTP's limits are asked only beyond a worker's
share (jdmail.workers.leases), and workers append their own lines to the master's log
files (jdmail.workers.logfiles)."""
