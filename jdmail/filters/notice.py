"""Notices from filters to an admin address (e.g. "a virus was caught"), delivered
like any accepted message: to the directory's mailboxes, or queued when the address
is remote."""

import email.utils
import os

from twisted.logger import Logger

from jdmail.interfaces import Envelope, Resolution
from jdmail.smtp.spool import new_queue_id

log = Logger()


def _compose(hostname, to, subject, body):
    text = (f"From: Mail Delivery System <MAILER-DAEMON@{hostname}>\r\n"
            f"To: <{to}>\r\nSubject: {subject}\r\nDate: {email.utils.formatdate(localtime=True)}\r\n"
            f"Message-ID: {email.utils.make_msgid(domain=hostname)}\r\nAuto-Submitted: auto-generated\r\n"
            "MIME-Version: 1.0\r\nContent-Type: text/plain; charset=utf-8\r\n"
            "Content-Transfer-Encoding: 8bit\r\n\r\n" + body.replace("\r\n", "\n").replace("\n", "\r\n"))
    if not text.endswith("\r\n"):
        text += "\r\n"
    return text.encode("utf-8")


async def send_notice(services, to, subject, body):
    """Deliver a short text message from MAILER-DAEMON to ``to``; failures are logged,
    never raised (a notice must not change the verdict on the message it is about)."""
    from jdmail.delivery.local import LocalDelivery
    spool_dir = services.extra.get("spool_dir") or os.path.join(services.datadir, "spool", "incoming")
    queue_id = new_queue_id()
    path = os.path.join(spool_dir, queue_id)
    try:
        resolution = await services.directory.resolve(to)
        if resolution.kind == Resolution.Kind.UNKNOWN:
            raise ValueError(f"{to} is not a known address")
        data = _compose(services.hostname, to, subject, body)

        def write():
            with open(path, "xb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        await services.run_blocking(write)
        envelope = Envelope(queue_id, "", [(to, resolution)])
        await LocalDelivery(services.store, services.queue).deliver(envelope, path)
        log.info("filter notice id={id} to={to} subject={subject}", id=queue_id, to=to, subject=subject)
    except Exception as e:
        log.failure("filter notice to {to} failed: {error}", to=to, error=e)
    finally:
        try:
            os.unlink(path)
        except OSError:
            pass
