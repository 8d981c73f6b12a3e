"""Local delivery: every recipient's mailboxes get the one spooled copy."""

from zope.interface import implementer

from jdmail.interfaces import IDeliveryAgent


@implementer(IDeliveryAgent)
class LocalDelivery:
    """Delivers an accepted message into the store for each resolved local mailbox.

    A mailbox reached through several recipients (an alias and the user itself)
    gets one copy. Forwarding to remote addresses waits for the outbound queue.
    """

    def __init__(self, store):
        self._store = store

    async def deliver(self, envelope, path):
        mailboxes = []
        for _address, resolution in envelope.recipients:
            for mailbox in resolution.mailboxes:
                if mailbox not in mailboxes:
                    mailboxes.append(mailbox)
        if mailboxes:
            await self._store.deliver(mailboxes, path)
        return {address: None for address, _resolution in envelope.recipients}
