"""Every contract between jdmail's parts, and the value types they exchange.

Protocols and delivery depend on these interfaces only; concrete classes are
chosen by name from the INI through jdmail.registry.
"""

import collections
import enum
from dataclasses import dataclass, field

from twisted.plugin import IPlugin
from zope.interface import Attribute, Interface

from jdmail.options import Option

__all__ = [
    "Option", "Stage", "Action", "Verdict", "AuthResult", "Account", "Resolution", "Envelope", "MessageInfo",
    "IComponentFactory", "IDirectoryFactory", "IStoreFactory", "IFilterFactory",
    "IUserDirectory", "IDirectoryAdmin", "IMessageStore", "IMailboxStore",
    "IFilter", "IDeliveryAgent", "IAccountStore", "IFolder",
    "MessageRecord", "FolderInfo", "FolderChanges", "QuotaExceeded", "FolderError", "FolderGone",
    "PROTOCOLS",
]

# The protocols a user may be allowed: "smtp" is authenticated submission (AUTH on
# submission/smtps/MX); "pop3" and "imap" are logins on those servers.
PROTOCOLS = frozenset({"smtp", "pop3", "imap"})


# --- value types ---------------------------------------------------------------------------

class Stage(enum.Enum):
    """The points of an SMTP session at which filters are asked for a verdict.

    OUTBOUND comes after DATA, only for submitted mail (an authenticated client or one
    in ``[smtp] mynetworks``), before the message is queued or delivered: the place to
    add headers such as a DKIM signature."""
    CONNECT = "connect"
    HELO = "helo"
    MAIL = "mail"
    RCPT = "rcpt"
    DATA = "data"
    OUTBOUND = "outbound"


class Action(enum.IntEnum):
    """What a verdict asks for; a larger value is stronger and wins."""
    CONTINUE = 0
    QUARANTINE = 1
    ACCEPT = 2
    DISCARD = 3
    TEMPFAIL = 4
    REJECT = 5


@dataclass(frozen=True)
class AuthResult:
    """One method result for the ``Authentication-Results:`` header (RFC 8601), e.g.
    ``AuthResult("spf", "pass", properties=(("smtp.mailfrom", "a@example.org"),))``
    renders as ``spf=pass smtp.mailfrom=a@example.org``."""
    method: str                # spf, dkim, dmarc, iprev, auth, ...
    result: str                # pass, fail, softfail, neutral, none, temperror, permerror, ...
    reason: str = ""           # rendered as reason="..."
    properties: tuple = ()     # ((ptype.property, value), ...): smtp.mailfrom, header.d, header.from, ...

    def render(self):
        out = f"{self.method}={self.result}"
        if self.reason:
            reason = self.reason.replace("\\", "\\\\").replace('"', '\\"')
            out += f' reason="{reason}"'
        for key, value in self.properties:
            value = str(value)
            if not value or any(c in value for c in ' \t;()"\\'):
                value = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
            out += f" {key}={value}"
        return out


@dataclass(frozen=True)
class Verdict:
    """A filter's answer for one stage (see jdmail.filters for how verdicts combine).

    ``text`` goes to the client (short, generic); ``reason`` only to the log.
    ``headers`` are (name, value) pairs prepended to the stored message.
    ``score`` (None: this filter does not score) is added to the transaction's spam
    score; ``tests`` name what scored (shown in X-Spam-Status); ``spam`` True tags the
    message as spam whatever the total. ``auth_results`` are AuthResult values for the
    Authentication-Results header.
    """
    action: Action = Action.CONTINUE
    code: int = 250
    enhanced: str = "2.0.0"
    text: str = ""
    reason: str = ""
    headers: tuple = ()
    score: float = None
    tests: tuple = ()
    spam: bool = False
    auth_results: tuple = ()

    @classmethod
    def reject(cls, text, code=550, enhanced="5.7.1", reason="", **kw):
        """Refuse (5xx): the client gets ``code enhanced text``."""
        return cls(Action.REJECT, code, enhanced, text, reason, **kw)

    @classmethod
    def tempfail(cls, text, code=451, enhanced="4.7.1", reason="", **kw):
        """Refuse for now (4xx): the client retries later."""
        return cls(Action.TEMPFAIL, code, enhanced, text, reason, **kw)

    @classmethod
    def accept(cls, reason="", **kw):
        """Accept: no later filter runs for this transaction (or connection)."""
        return cls(Action.ACCEPT, reason=reason, **kw)

    @classmethod
    def discard(cls, reason="", **kw):
        """Answer 250 but deliver the message nowhere (logged)."""
        return cls(Action.DISCARD, reason=reason, **kw)

    @classmethod
    def quarantine(cls, reason="", **kw):
        """Keep the message away from the inbox: the filter's ``quarantine`` setting says
        where (the recipient's Junk folder or the central quarantine)."""
        return cls(Action.QUARANTINE, reason=reason, **kw)

    @classmethod
    def add_headers(cls, *headers, reason="", **kw):
        """Continue, adding headers: each a (name, value) pair or a "Name: value" string."""
        return cls(Action.CONTINUE, headers=tuple(headers), reason=reason, **kw)


Verdict.CONTINUE = Verdict()


@dataclass(frozen=True)
class Account:
    """A mailbox owner as the directory knows it.

    ``name`` is the login and primary address (lower-case); ``mailbox`` is the
    store's key for the user's mail (the store decides where that lives). Quotas
    are the effective ones (the user's own, else the domain default; 0 = none);
    ``protocols`` is the subset of PROTOCOLS the user may log in with.
    """
    name: str
    mailbox: str
    quota_bytes: int = 0
    enabled: bool = True
    quota_messages: int = 0
    protocols: frozenset = PROTOCOLS


class ResolutionKind(enum.Enum):
    UNKNOWN = "unknown"       # a local domain, but nobody by that name
    LOCAL = "local"           # delivered to ``mailboxes`` (and ``remote`` forwards)
    REMOTE = "remote"         # the domain is not ours
    REFUSED = "refused"       # a group the sender may not post to (``text`` says why)


@dataclass(frozen=True)
class Resolution:
    """Where mail for one address goes after aliases, domain aliases and catch-alls."""
    kind: ResolutionKind
    mailboxes: tuple = ()     # Account.mailbox keys, each once
    remote: tuple = ()        # non-local addresses an alias points to
    accounts: tuple = ()      # Account objects matching ``mailboxes``
    text: str = ""            # REFUSED: the sentence for the client


Resolution.Kind = ResolutionKind


@dataclass
class Envelope:
    """An accepted message's envelope: who sent it and where each recipient resolved."""
    queue_id: str
    sender: str                                     # '' for the null reverse-path
    recipients: list = field(default_factory=list)  # [(address as given, Resolution)]
    client_ip: str = ""
    helo: str = ""
    auth_user: str = ""
    smtputf8: bool = False
    ret: str = ""                                   # RFC 3461 MAIL parameters: FULL | HDRS | ''
    envid: str = ""
    dsn: dict = field(default_factory=dict)         # address -> (NOTIFY tuple, ORCPT) from RCPT
    junk: bool = False                              # local mailboxes get it in their Junk folder


class MessageRecord(collections.namedtuple("MessageRecord", "uid flags modseq size internaldate")):
    """One message of a folder as IMAP sees it, from the folder's index (no file opened):
    uid, flags (a frozenset of IMAP flags: system flags ("\\Seen") and keywords ("$Junk")),
    modseq, size (RFC822.SIZE: octets with CRLF line ends), internaldate (seconds since
    the epoch, UTC).

    (A tuple: a folder of 100,000 messages builds 100,000 of them when it is loaded, and
    ``tuple.__new__`` mapped over the index rows does that without a Python call each.)"""
    __slots__ = ()


@dataclass(frozen=True)
class FolderInfo:
    """One folder in a LIST answer."""
    name: str                 # the IMAP name (Unicode; "/" separates levels; "INBOX" for the inbox)
    attributes: frozenset     # e.g. {"\\HasChildren"}, {"\\HasNoChildren", "\\Sent"}
    subscribed: bool


@dataclass
class FolderChanges:
    """What changed in a selected folder since the session last looked (``IFolder.refresh``)."""
    expunged: list = field(default_factory=list)   # UIDs gone, ascending
    added: list = field(default_factory=list)      # MessageRecords new to the session, ascending UID
    changed: list = field(default_factory=list)    # MessageRecords whose flags/modseq changed


@dataclass
class MessageInfo:
    """One message as a mailbox listing shows it."""
    key: str            # the store's stable identifier (also the POP3 UIDL)
    size: int           # octets, with CRLF line ends, as a client receives it
    flags: frozenset = field(default_factory=frozenset)


# --- component factories (what plugins provide) -------------------------------------------

class IComponentFactory(IPlugin):
    """A factory that jdmail finds with twisted.plugin and builds from an INI section."""

    kind = Attribute("The name the INI uses to choose this component (str)")
    description = Attribute("One line saying what the component does")
    options = Attribute("dict of INI key -> Option: every key the section may hold")

    def build(name, settings, services):
        """Return the component. ``settings`` maps every key in ``options`` to its
        parsed value; ``services`` is the jdmail.service.Services bundle."""


class IDirectoryFactory(IComponentFactory):
    """Builds an IUserDirectory ([directory] type = kind): usually
    ``jdmail.directory.service.DirectoryService(backend, services, name)`` over an
    IDirectoryBackend, so every backend shares aliases, groups, caching and checks."""


class IStoreFactory(IComponentFactory):
    """Builds an IMessageStore ([store] type = kind)."""


class IFilterFactory(IComponentFactory):
    """Builds an IFilter ([filter:NAME] type = kind, listed in [filters] chain)."""


# --- the components ------------------------------------------------------------------------

class IUserDirectory(Interface):
    """Who is here: domains, mailboxes, aliases and passwords.

    Called by the SMTP server at RCPT/MAIL time, by the cred checker at login,
    and by delivery. Every method returns a Deferred or is a coroutine; a
    backend that cannot answer raises jdmail.errors.DirectoryUnavailable.
    """

    name = Attribute("The component's INI name")

    def is_local_domain(domain):
        """True when mail for ``domain`` (lower-case) is ours (a domain or a domain alias)."""

    def resolve(address, sender=None):
        """Return the Resolution of an envelope address (any case). With ``sender``
        (the envelope sender, '' for the null sender) a group restricted to its
        members answers REFUSED to other senders; without it nothing is refused."""

    def authenticate(username, password):
        """Return the Account when ``password`` (str) is right for ``username``, else None."""

    def account(username):
        """Return the Account for a login name / primary address, or None."""

    def owns(account, address):
        """True when the Account may use ``address`` as its sender (its own, or an alias to it)."""


class IDirectoryAdmin(Interface):
    """Administrative changes, used by jdmailctl. Synchronous (jdmailctl is a plain CLI);
    refusals raise jdmail.errors.DirectoryError with a one-line reason."""

    def add_domain(domain): """Add a local domain."""
    def remove_domain(domain): """Remove a domain with no users or aliases left."""
    def list_domains(): """Return the domains, sorted."""
    def add_user(address, password_hash, quota_bytes=0): """Add a mailbox user."""
    def set_password(address, password_hash): """Change a user's password hash."""
    def remove_user(address): """Remove a user (mail on disk is kept)."""
    def list_users(domain=None): """Return [(address, quota_bytes, enabled)], sorted."""
    def add_alias(source, targets): """source (a@d, *@d or @d) -> targets (addresses or @d)."""
    def remove_alias(source, target=None): """Remove one target of an alias, or all of them."""
    def list_aliases(domain=None): """Return [(source, target)], sorted."""
    def get_user(address): """Return the user's UserRecord (jdmail.directory.backend), or None."""
    def set_user(address, quota_bytes=None, quota_messages=None, enabled=None, protocols=None,
                 forward=None, keep_copy=None):
        """Change the given settings of a user (None: leave as is)."""
    def get_domain(domain): """Return the DomainRecord of a local domain, or None."""
    def set_domain(domain, quota_bytes=None, quota_messages=None):
        """Change a domain's default quotas (None: leave as is)."""
    def add_group(address, members=(), members_only=False): """Add a group (distribution list)."""
    def remove_group(address): """Remove a group."""
    def list_groups(domain=None): """Return [(address, member count, members_only)], sorted."""
    def get_group(address): """Return the GroupRecord, or None."""
    def set_group(address, members_only): """Restrict posting to members (and senders), or not."""
    def add_group_member(address, member): """Add a member (any address) to a group."""
    def remove_group_member(address, member): """Remove a member from a group."""
    def add_group_sender(address, sender): """Allow an address or '@domain' to post to a group."""
    def remove_group_sender(address, sender): """Take back a sender's permission."""


class IMessageStore(Interface):
    """Where mail lives. Deliveries are durable (fsynced) before they return."""

    name = Attribute("The component's INI name")

    def deliver(mailboxes, path, folders=None, before=None):
        """Deliver the complete, fsynced message file at ``path`` into the INBOX (or
        the folder ``folders`` names) of each mailbox key in ``mailboxes``. Returns a
        Deferred/coroutine firing when every copy is on disk and its directory entry
        fsynced; raises on failure. ``before``, when given, is a blocking callable that
        makes ``path`` complete and fsynced: run it on the thread pool before the file
        is used (with the store's own blocking work, so one hand-over does both)."""

    def mailbox(mailbox, folder="INBOX"):
        """Return an IMailboxStore for one folder of one mailbox key (created if missing)."""

    def account(mailbox, quota_bytes=0, quota_messages=0):
        """Return the IAccountStore (all folders, for IMAP) of one mailbox key.
        ``quota_bytes`` and ``quota_messages`` (0 = none) are the directory's quotas for it."""

    def usage(mailbox):
        """(bytes, messages) stored for a mailbox key over all folders (Deferred/coroutine);
        used by SMTP to refuse mail over quota."""


class QuotaExceeded(Exception):
    """An APPEND/COPY/MOVE/delivery would exceed the mailbox's quota."""


class FolderError(Exception):
    """A folder operation refused: no such folder, exists already, bad or unsafe name.
    str() is a sentence for the client (after NO)."""


class FolderGone(FolderError):
    """The selected folder is no longer there as the session knew it: deleted (by another
    session or program), or its index was rebuilt (new UIDVALIDITY). Raised by every
    IFolder method of such a view; the session must end (RFC 3501: BYE, as Dovecot does)."""


class IAccountStore(Interface):
    """All folders of one user, as the IMAP server works with them.

    Every method returns a Deferred or is a coroutine. Folder names are IMAP
    names as Unicode (the protocol layer decodes modified UTF-7), "/" is the
    hierarchy delimiter, "INBOX" is case-insensitive. Names that are unsafe (empty
    levels, ".", "..", NUL, control characters) raise FolderError.
    """

    def list_folders():
        """Every folder, as FolderInfo (INBOX first)."""

    def create_folder(name, special_use=None):
        """Create a folder (and missing parents). FolderError if it exists."""

    def delete_folder(name):
        """Delete a folder and its mail. INBOX cannot be deleted (FolderError)."""

    def rename_folder(old, new):
        """Rename a folder with its children. Renaming INBOX moves its messages into
        the new folder and leaves INBOX empty (RFC 3501 6.3.5)."""

    def subscribe(name, subscribed=True):
        """(Un)subscribe a folder name (it need not exist for unsubscribe)."""

    def subscriptions():
        """The subscribed names, INBOX first (LSUB / LIST (SUBSCRIBED)); they may include
        names that no longer exist."""

    def status(name):
        """dict with MESSAGES, RECENT, UIDNEXT, UIDVALIDITY, UNSEEN, HIGHESTMODSEQ, SIZE."""

    def open_folder(name, readonly=False):
        """Select a folder for one session: an IFolder. FolderError if it does not exist."""

    def append(name, data, flags=(), internaldate=None):
        """Store ``data`` (bytes, CRLF line ends) durably in folder ``name``; returns
        (uidvalidity, uid). Raises QuotaExceeded or FolderError."""

    def quota():
        """(used_bytes, limit_bytes, used_messages, limit_messages); limits 0 = none."""


class IFolder(Interface):
    """One selected folder as one IMAP session sees it.

    ``records`` is the session's view: a list of MessageRecord in UID order, so the
    message sequence number of ``records[i]`` is i + 1. The view changes only in
    ``refresh`` (so the protocol decides when EXPUNGE/EXISTS may be sent) and by the
    session's own store/expunge calls.
    """

    name = Attribute("The folder's IMAP name")
    readonly = Attribute("True when opened with EXAMINE")
    uidvalidity = Attribute("int")
    uidnext = Attribute("int: the next UID this folder will assign")
    highestmodseq = Attribute("int (CONDSTORE): the highest MODSEQ in the folder")
    records = Attribute("list of MessageRecord, the session's view")
    recent = Attribute("set of UIDs that are \\Recent in this session (RFC 3501 2.3.2: each new "
                       "message is \\Recent in one read-write session; EXAMINE sees them without "
                       "taking them). The flags in ``records`` never contain \\Recent.")

    def refresh():
        """Bring the view up to date with the disk and other sessions; returns
        FolderChanges. Messages that appeared in the Maildir from elsewhere get UIDs."""

    def store_flags(uids, flags, mode, unchanged_since=None):
        """Change flags: mode "+" adds, "-" removes, "=" replaces. With
        ``unchanged_since`` (CONDSTORE) a message whose modseq is higher is left alone.
        Returns (changed MessageRecords, UIDs refused by unchanged_since)."""

    def copy(uids, dest):
        """Copy messages to folder ``dest``; returns (dest uidvalidity, [(uid, new uid)]).
        Raises QuotaExceeded or FolderError."""

    def move(uids, dest):
        """Like copy, then the originals are expunged (RFC 6851); returns the same,
        and the view no longer holds them."""

    def expunge(uids=None):
        """Remove messages flagged \\Deleted (only those in ``uids`` when given);
        returns the expunged UIDs ascending; the view no longer holds them."""

    def open_message(uid):
        """A binary file object with the message's octets (CRLF line ends)."""

    def structure(uid):
        """The message's parsed MIME structure (jdmail.mime.MessageStructure), cached in
        the index after the first parse (Deferred/coroutine). Raises FileNotFoundError
        when the message is gone."""

    def structures(uids):
        """``{uid: MessageStructure}`` for many messages at once (Deferred/coroutine);
        the IMAP server calls it for FETCH ENVELOPE/BODY[STRUCTURE]/sections and for
        SEARCH and SORT keys that need headers, in batches of a few hundred UIDs.
        Messages that are gone (expunged, or their file vanished) are left out, never
        an error. Equal to ``structure(uid)`` for each UID, but the blocking work
        (one index query for the cached ones, parsing the rest, one transaction to
        cache them) runs on the thread pool in a few calls, not one per message."""

    def vanished_since(modseq):
        """UIDs expunged after ``modseq`` (QRESYNC VANISHED (EARLIER))."""

    def listen(callback):
        """Call ``callback()`` (no arguments) whenever the folder may have changed
        (delivery, another session); returns a function that stops the calls. IDLE uses it."""

    def close():
        """The session is done with the folder (CLOSE, UNSELECT, SELECT elsewhere, logout)."""


class IMailboxStore(Interface):
    """One folder of one user, as POP3 (and later IMAP) sees it."""

    def list():
        """Return (Deferred/coroutine) the messages, oldest first, as MessageInfo."""

    def open(key):
        """Return a binary file object with the message's octets (CRLF line ends)."""

    def remove(keys):
        """Delete the messages with these keys, durably."""


class IFilter(Interface):
    """Inspects mail at the stages it declares and returns a Verdict for each.

    Called by jdmail.filters.chain.FilterChain from the SMTP server, in ``[filters]
    chain`` order; what ``txn`` holds at each stage is listed in jdmail.filters."""

    name = Attribute("The instance name from the INI ([filter:NAME])")
    stages = Attribute("frozenset of Stage values this filter acts at")

    def check(stage, txn):
        """Return a Verdict (or a Deferred/coroutine of one) for ``txn`` at ``stage``."""


class IDeliveryAgent(Interface):
    """Takes an accepted message and its resolved recipients and delivers it."""

    def deliver(envelope, path, commit=None):
        """Deliver the fsynced message at ``path``; return {recipient: None or error text}.
        With ``commit`` (a blocking callable that fsyncs ``path``; the SMTP server's
        spool commit) the file is durable only once it has run: the agent runs it on
        the thread pool before anything reads the file."""


@dataclass
class QueuedRecipient:
    """One recipient of a queued message and where its delivery stands."""
    address: str
    state: str = "pending"        # pending | deferred | delivered | bounced | held
    attempts: int = 0
    next_attempt: float = 0.0     # epoch seconds
    last_error: str = ""          # the last remote reply or local reason
    notify: tuple = ()            # RFC 3461 NOTIFY values (SUCCESS, FAILURE, DELAY) or () for the default
    orcpt: str = ""               # RFC 3461 ORCPT, as given


@dataclass
class QueuedMessage:
    """A message in the outbound queue: one stored copy plus per-recipient state."""
    queue_id: str
    sender: str                   # '' for the null reverse-path (bounces)
    recipients: list              # [QueuedRecipient]
    arrived: float                # epoch seconds
    size: int
    ret: str = ""                 # RFC 3461 RET: FULL | HDRS | ''
    envid: str = ""               # RFC 3461 ENVID
    held: bool = False
    warned: bool = False          # a delay warning was sent
    smtputf8: bool = False        # received with SMTPUTF8 (RFC 6531)


class IDeliveryQueue(Interface):
    """The durable outbound queue (issue 4). Called by delivery (enqueue), by the
    queue runner (due/defer/delivered/bounce) and by jdmailctl queue (list/flush/
    hold/release/delete). Every method returns a Deferred or is a coroutine.
    A message is on disk, fsynced, before ``enqueue`` returns."""

    def enqueue(envelope, path, recipients):
        """Store the message at ``path`` for ``recipients`` (addresses, with their
        DSN parameters as QueuedRecipient); returns the QueuedMessage."""

    def due(now, limit):
        """QueuedMessages with at least one recipient due for an attempt at ``now``."""

    def record(queue_id, results):
        """Record an attempt: {address: (state, error text, next_attempt)}."""

    def open_message(queue_id):
        """A binary file object with the message's octets."""

    def list():
        """Every QueuedMessage, oldest first."""

    def flush(queue_id=None):
        """Make one message (or all) due now."""

    def hold(queue_id, held=True):
        """Keep a message from being attempted until released."""

    def delete(queue_id):
        """Remove a message without delivering or bouncing it."""
