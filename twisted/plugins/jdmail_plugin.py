"""twistd plugin: `twistd jdmail` runs the jdmail mail server."""

from twisted.application.service import ServiceMaker

jdmail = ServiceMaker("jdmail", "jdmail.tap", "jdmail mail server (SMTP, POP3, IMAP)", "jdmail")
