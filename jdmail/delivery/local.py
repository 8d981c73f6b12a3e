"""Local delivery: every recipient's mailboxes get the one spooled copy; addresses
outside our domains (remote recipients, alias targets) go to the outbound queue."""

from zope.interface import implementer

from jdmail.interfaces import IDeliveryAgent, QueuedRecipient, Resolution


@implementer(IDeliveryAgent)
class LocalDelivery:
    """Delivers an accepted message into the store for each resolved local mailbox,
    and enqueues (fsynced) the remote addresses before returning.

    A mailbox reached through several recipients (an alias and the user itself)
    gets one copy; a remote address reached twice is queued once. With
    ``envelope.junk`` (a filter tagged it as spam) local copies go into each
    mailbox's Junk folder.
    """

    def __init__(self, store, queue=None):
        self._store = store
        self._queue = queue

    @staticmethod
    def remote_addresses(envelope):
        """[(address, notify, orcpt)] to queue: remote recipients as given (with their
        DSN parameters) and the remote targets of local aliases."""
        out, seen = [], set()
        for address, resolution in envelope.recipients:
            notify, orcpt = envelope.dsn.get(address, ((), ""))
            targets = [address] if resolution.kind == Resolution.Kind.REMOTE else list(resolution.remote)
            for target in targets:
                if target.lower() not in seen:
                    seen.add(target.lower())
                    out.append((target, notify, orcpt if target == address else orcpt or ""))
        return out

    async def junk_folder(self, mailbox):
        """The name of the mailbox's folder marked \\Junk (RFC 6154), created as "Junk"
        when there is none."""
        from jdmail.interfaces import FolderError
        account = self._store.account(mailbox)
        for info in await account.list_folders():
            if "\\Junk" in info.attributes:
                return info.name
        try:
            await account.create_folder("Junk", special_use="\\Junk")
        except FolderError:
            pass            # a "Junk" without the attribute (or made meanwhile): use it
        return "Junk"

    async def deliver(self, envelope, path, commit=None):
        mailboxes = []
        for _address, resolution in envelope.recipients:
            for mailbox in resolution.mailboxes:
                if mailbox not in mailboxes:
                    mailboxes.append(mailbox)
        remote = self.remote_addresses(envelope)
        if commit is not None and (remote or not mailboxes):
            await self._store.deliver([], path, before=commit)     # the queue reads the file: durable first
            commit = None
        if remote:
            if self._queue is None:
                raise RuntimeError("remote recipients but no outbound queue")
            await self._queue.enqueue(
                envelope, path, [QueuedRecipient(address=a, notify=tuple(n), orcpt=o) for a, n, o in remote],
                ret=envelope.ret, envid=envelope.envid)
        if mailboxes and envelope.junk:
            folders = {m: await self.junk_folder(m) for m in mailboxes}
            await self._store.deliver(mailboxes, path, folders=folders, before=commit)
        elif mailboxes:
            await self._store.deliver(mailboxes, path, before=commit)
        return {address: None for address, _resolution in envelope.recipients}
