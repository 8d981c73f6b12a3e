"""SMTP worker processes: the server process (the master) binds the SMTP ports and
hands them to N workers that accept and receive mail themselves; what must stay in one
place (connection limits, mailbox indexes, the queue runner, the log) is asked of the
master over a control channel per worker (jdmail.workers.protocol)."""
