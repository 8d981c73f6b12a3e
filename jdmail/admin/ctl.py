"""jdmailctl: manage the domains, users and aliases of jdmail's user directory, the
outbound queue, the central quarantine and the Bayes spam classifier's training.

Exit status: 0 done, 1 the change was refused (one line on stderr), 2 usage or
configuration problem.
"""

import argparse
import getpass
import os
import sys

PROG = "jdmailctl"


class CtlError(Exception):
    """A refusal to report as one line; ``status`` is the exit code."""

    def __init__(self, message, status=1):
        super().__init__(message)
        self.status = status


def build_parser():
    parser = argparse.ArgumentParser(prog=PROG, description="Manage jdmail's domains, users and aliases.")
    parser.add_argument("--config", metavar="FILE", default=None,
                        help="INI file (default: $JDMAIL_CONFIG, else the embedded default)")
    groups = parser.add_subparsers(dest="group", metavar="{domain,user,alias,group,db,queue,quarantine,dkim,bayes,plugins}",
                                   required=True)

    domain = groups.add_parser("domain", help="local domains").add_subparsers(dest="action", required=True)
    p = domain.add_parser("add", help="add a local domain")
    p.add_argument("domain")
    domain.add_parser("list", help="list the local domains")
    p = domain.add_parser("remove", help="remove a domain that has no users or aliases left")
    p.add_argument("domain")
    p = domain.add_parser("set", help="set the default quotas of the domain's users")
    p.add_argument("domain")
    p.add_argument("--quota", help="default mailbox size limit such as 500M (0: none)")
    p.add_argument("--quota-messages", help="default message count limit (0: none)")
    p = domain.add_parser("show", help="show a domain's default quotas")
    p.add_argument("domain")

    user = groups.add_parser("user", help="mailbox users").add_subparsers(dest="action", required=True)
    p = user.add_parser("add", help="add a user")
    p.add_argument("address")
    p.add_argument("--password", help="the password (default: prompt, or one line from stdin)")
    p.add_argument("--quota", default="0", help="mailbox size limit such as 500M or 2G (default: 0, no limit)")
    p.add_argument("--quota-messages", default=None, help="message count limit (default: 0, the domain's)")
    p.add_argument("--scheme", default=None, help="password hash scheme: BLF-CRYPT or ARGON2ID "
                   "(default: [directory] password_scheme)")
    p = user.add_parser("passwd", help="change a user's password")
    p.add_argument("address")
    p.add_argument("--password", help="the new password (default: prompt, or one line from stdin)")
    p.add_argument("--scheme", default=None, help="password hash scheme: BLF-CRYPT or ARGON2ID "
                   "(default: [directory] password_scheme)")
    p = user.add_parser("list", help="list users as: address quota_bytes enabled|disabled")
    p.add_argument("domain", nargs="?")
    p = user.add_parser("remove", help="remove a user (mail on disk is kept)")
    p.add_argument("address")
    p = user.add_parser("show", help="show a user's settings and mailbox usage")
    p.add_argument("address")
    p = user.add_parser("set", help="change a user's quotas, switches and forwarding")
    p.add_argument("address")
    p.add_argument("--quota", help="mailbox size limit such as 500M or 2G (0: the domain default)")
    p.add_argument("--quota-messages", help="message count limit (0: the domain default)")
    on_off = p.add_mutually_exclusive_group()
    on_off.add_argument("--enable", dest="enabled", action="store_const", const=True, default=None,
                        help="allow logins")
    on_off.add_argument("--disable", dest="enabled", action="store_const", const=False,
                        help="refuse logins (mail is still received)")
    p.add_argument("--protocols", help="comma-separated protocols the user may log in with: "
                                       "imap, pop3, smtp (submission); '' for none")
    p.add_argument("--forward", help="comma-separated addresses to forward mail to; '' to stop forwarding")
    copy = p.add_mutually_exclusive_group()
    copy.add_argument("--keep-copy", dest="keep_copy", action="store_const", const=True, default=None,
                      help="when forwarding, also keep the mail in this mailbox (the default)")
    copy.add_argument("--no-keep-copy", dest="keep_copy", action="store_const", const=False,
                      help="when forwarding, do not keep a copy")

    alias = groups.add_parser("alias", help="aliases, catch-alls (*@dom) and domain aliases (@dom)") \
        .add_subparsers(dest="action", required=True)
    p = alias.add_parser("add", help="point SOURCE (a@dom, *@dom or @dom) to one or more targets")
    p.add_argument("source")
    p.add_argument("targets", nargs="+", metavar="TARGET")
    p = alias.add_parser("list", help="list aliases as: source target")
    p.add_argument("domain", nargs="?")
    p = alias.add_parser("remove", help="remove one target of an alias, or the whole alias")
    p.add_argument("source")
    p.add_argument("target", nargs="?")

    group = groups.add_parser("group", help="groups (distribution lists): one address, many members") \
        .add_subparsers(dest="action", required=True)
    p = group.add_parser("add", help="add a group, optionally with members")
    p.add_argument("address")
    p.add_argument("members", nargs="*", metavar="MEMBER")
    p.add_argument("--members-only", action="store_true", help="only members (and allowed senders) may post")
    p = group.add_parser("remove", help="remove a group")
    p.add_argument("address")
    p = group.add_parser("list", help="list groups as: address members posting")
    p.add_argument("domain", nargs="?")
    p = group.add_parser("show", help="show a group's members, allowed senders and posting rule")
    p.add_argument("address")
    p = group.add_parser("set", help="who may post: members only, or anyone")
    p.add_argument("address")
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--members-only", dest="members_only", action="store_const", const=True,
                     help="only members and allowed senders may post")
    who.add_argument("--anyone", dest="members_only", action="store_const", const=False,
                     help="anyone may post")
    for name, what in (("member", "members"), ("sender", "senders allowed to post (an address or @domain)")):
        sub = group.add_parser(name, help=what).add_subparsers(dest="subaction", required=True)
        for verb in ("add", "remove"):
            p = sub.add_parser(verb, help=f"{verb} one of the group's {what.split(' ')[0]}")
            p.add_argument("address", metavar="GROUP")
            p.add_argument("value", metavar=name.upper())

    queue = groups.add_parser("queue", help="the outbound queue of the (running) server") \
        .add_subparsers(dest="action", required=True)
    queue.add_parser("list", help="list queued messages and their recipients")
    queue.add_parser("flush", help="make every queued message due now")
    for name, text in (("show", "show one message: envelope, recipients, state, last error"),
                       ("retry", "make one message due now"),
                       ("hold", "keep one message from being attempted"),
                       ("release", "let a held message be attempted again"),
                       ("delete", "remove one message without delivering or bouncing it")):
        queue.add_parser(name, help=text).add_argument("queue_id")

    dkim = groups.add_parser("dkim", help="DKIM signing keys of local domains") \
        .add_subparsers(dest="action", required=True)
    p = dkim.add_parser("genkey", help="create a signing key for DOMAIN and print its DNS TXT record")
    p.add_argument("domain")
    p.add_argument("--selector", default="default", help="the DNS selector (default: default)")
    p.add_argument("--bits", type=int, default=2048, help="RSA key size (default: 2048)")
    p = dkim.add_parser("record", help="print the DNS TXT record of DOMAIN's current key")
    p.add_argument("domain")
    dkim.add_parser("list", help="list keys as: domain selector [current]")

    bayes = groups.add_parser("bayes", help="the Bayes spam classifier's token tables") \
        .add_subparsers(dest="action", required=True)
    p = bayes.add_parser("train", help="train from Maildir folders or mbox files of known spam and ham")
    p.add_argument("--spam", action="append", default=[], metavar="PATH",
                   help="a Maildir folder or mbox file of spam (repeatable)")
    p.add_argument("--ham", action="append", default=[], metavar="PATH",
                   help="a Maildir folder or mbox file of ham (repeatable)")
    p.add_argument("--user", metavar="ADDR", help="train this user's own table (scope = user), not the global one")
    p.add_argument("--filter", metavar="NAME", help="the [filter:NAME] section to use (default: the first bayes one)")
    p = bayes.add_parser("stats", help="messages and tokens trained, per table")
    p.add_argument("--filter", metavar="NAME", help="the [filter:NAME] section to use (default: the first bayes one)")
    p = bayes.add_parser("expire", help="delete old, rarely seen tokens (what the filter does once a day)")
    p.add_argument("--older-than", metavar="DURATION",
                   help="not trained for this long, e.g. 90d (default: the section's token_expiry)")
    p.add_argument("--max-count", metavar="N", type=int,
                   help="seen in at most N trained messages (default: the section's expiry_max_count)")
    p.add_argument("--user", metavar="ADDR", help="only this user's own table (default: every table)")
    p.add_argument("--filter", metavar="NAME", help="the [filter:NAME] section to use (default: the first bayes one)")

    quarantine = groups.add_parser("quarantine", help="the central quarantine of filtered messages") \
        .add_subparsers(dest="action", required=True)
    quarantine.add_parser("list", help="list quarantined messages: id, date, size, sender, recipients, why")
    for name, text in (("show", "show one message's envelope, reasons and header"),
                       ("release", "deliver one message as it would have been delivered, then remove it"),
                       ("delete", "remove one message without delivering it")):
        quarantine.add_parser(name, help=text).add_argument("quarantine_id", metavar="ID")

    db = groups.add_parser("db", help="the directory's database schema (mysql)") \
        .add_subparsers(dest="action", required=True)
    p = db.add_parser("init", help="create jdmail's schema in an empty database")
    p.add_argument("--filters-only", action="store_true",
                   help="only the greylist and Bayes tables, in a database read through user_query "
                        "(e.g. PostfixAdmin's), leaving its own tables alone")
    db.add_parser("upgrade", help="bring jdmail's schema up to this version of jdmail")

    groups.add_parser("plugins", help="list the components jdmail can use: kind, name, file, options")
    return parser


def list_plugins(path, out):
    """Print every directory, store and filter plugin with its origin and options,
    then any plugin module that failed to load."""
    from jdmail import config as config_module, registry
    from jdmail.errors import ConfigErrors
    try:
        config_module.load(path)
    except ConfigErrors:
        pass    # plugins are still listed; the server reports config problems itself
    for kind in registry.KINDS:
        for name, factory in sorted(registry.factories(kind).items()):
            module = sys.modules.get(type(factory).__module__)
            origin = getattr(module, "__file__", type(factory).__module__)
            out.write(f"{kind} {name}  ({origin})\n    {factory.description}\n")
            for key, option in factory.options.items():
                out.write(f"    {key} ({option.kind}, default {option.default!r}): {option.help}\n")
    for line in registry.problems():
        out.write(f"failed to load: {line}\n")
    return 0


# Commands that only read: they also work on directories jdmailctl cannot change.
SHOW_COMMANDS = frozenset({("user", "show"), ("domain", "show"), ("group", "show")})


def open_directory(path, read_only_ok=False):
    """Load the config and build its directory, one jdmailctl can change (or any, with
    ``read_only_ok``); CtlError(status=2) on any problem."""
    from jdmail.interfaces import IDirectoryAdmin
    from jdmail.services import Services

    config = _load_config(path)
    services = Services(reactor=None, config=config, hostname=config.hostname,
                        datadir=config.datadir, threadpool=None)
    factory, directory = _build_directory(config, services)
    if not read_only_ok and not IDirectoryAdmin.providedBy(directory):
        raise CtlError(read_only(directory, factory), status=2)
    return directory


def _build_directory(config, services):
    """(factory, directory) as [directory] says; CtlError(status=2) on config problems."""
    from jdmail.errors import ConfigError, ConfigErrors, DirectoryError
    factory, settings = config.components["directory"]
    try:
        return factory, factory.build("directory", settings, services)
    except (DirectoryError, ConfigError) as e:
        raise CtlError(str(e), status=2) from None
    except ConfigErrors as e:
        raise CtlError("\n".join(str(err) for err in e.errors), status=2) from None


def run_show_lookup(args, out, path):
    """user/domain/group show on a directory jdmailctl cannot change (LDAP, a MySQL
    schema read through user_query): the backend's own lookups, made as the server
    makes them (its thread pool or adbapi pool), under a reactor."""
    from twisted.python.threadpool import ThreadPool
    from jdmail.errors import DirectoryUnavailable
    from jdmail.services import Services

    config = _load_config(path)
    pool = ThreadPool(minthreads=1, maxthreads=2, name="jdmailctl")
    opened = []

    async def work(reactor):
        services = Services(reactor=reactor, config=config, hostname=config.hostname,
                            datadir=config.datadir, threadpool=pool)
        directory = _build_directory(config, services)[1]
        backend = getattr(directory, "backend", directory)
        opened.append(backend)
        try:
            await _show_from_backend(backend, args, out, path)
        except DirectoryUnavailable as e:
            raise CtlError(f"the directory cannot answer now: {e}") from None

    pool.start()
    try:
        _run_in_reactor(work)
    finally:
        pool.stop()
        for backend in opened:          # an adbapi pool closes itself with the reactor
            close = getattr(backend, "close", None)
            if close is not None and getattr(backend, "_pool", None) is None:
                close()
    return 0


async def _show_from_backend(backend, args, out, path):
    import inspect
    from jdmail.address import domain_of, normalize, normalize_domain

    async def ask(value):
        return await value if inspect.isawaitable(value) else value

    if args.group == "user":
        name = normalize(args.address)
        user = await ask(backend.user(name))
        if user is None:
            raise CtlError(f"{name} is not a user")
        write_user(out, user, await ask(backend.domain(domain_of(user.address))), path)
    elif args.group == "domain":
        name = normalize_domain(args.domain)
        domain = await ask(backend.domain(name))
        if domain is None:
            raise CtlError(f"{name} is not a local domain")
        write_domain(out, domain)
    else:
        name = normalize(args.address)
        group = await ask(backend.group(name))
        if group is None:
            raise CtlError(f"{name} is not a group")
        write_group(out, group)


def read_only(directory, factory):
    """The refusal for a directory jdmailctl cannot change, with the backend's reason."""
    reason = (getattr(directory, "read_only_reason", "") or getattr(factory, "read_only_reason", "")
              or "manage its users with its own tools")
    return f"the {factory.kind!r} directory cannot be changed with {PROG}; {reason}"


def read_password(given, stdin=None):
    """The password from --password, a tty prompt (asked twice) or one line of stdin."""
    stdin = stdin or sys.stdin
    if given is not None:
        password = given
    elif stdin.isatty():
        try:
            password = getpass.getpass("Password: ")
            again = getpass.getpass("Password (again): ")
        except (EOFError, KeyboardInterrupt):
            raise CtlError("no password given") from None
        if password != again:
            raise CtlError("the two passwords differ")
    else:
        line = stdin.readline()
        password = line[:-1] if line.endswith("\n") else line
        if password.endswith("\r"):
            password = password[:-1]
    if not password:
        raise CtlError("the password is empty")
    return password


def _hash(args, directory=None):
    from jdmail.passwords import DEFAULT_SCHEME, HASH_SCHEMES, hash_password
    configured = getattr(directory, "settings", {}).get("password_scheme") or DEFAULT_SCHEME
    scheme = (args.scheme or configured).upper()
    if scheme not in HASH_SCHEMES:
        raise CtlError(f"{args.scheme!r} is not a scheme jdmailctl can hash with "
                       f"(use one of {', '.join(HASH_SCHEMES)})")
    return hash_password(read_password(args.password), scheme)


def open_queue(path):
    """The server's QueueStore (safe while the server runs); CtlError(status=2) on problems."""
    from jdmail import config as config_module
    from jdmail.errors import ConfigErrors
    from jdmail.queue.store import QueueError, QueueStore
    from jdmail.registry import RegistryError
    from jdmail.services import Services

    try:
        config = config_module.load(path)
    except ConfigErrors as e:
        raise CtlError("\n".join(str(err) for err in e.errors), status=2) from None
    except RegistryError as e:
        raise CtlError(str(e), status=2) from None
    services = Services(reactor=None, config=config, hostname=config.hostname,
                        datadir=config.datadir, threadpool=None)
    directory = os.path.join(config.datadir, "queue")
    if not os.path.isdir(directory):
        raise CtlError(f"no queue at {directory} (the server has not run with this data directory)",
                       status=2)
    try:
        return QueueStore(directory, services, config["queue"]["min_backoff"],
                          config["queue"]["max_backoff"])
    except (QueueError, OSError) as e:
        raise CtlError(f"cannot open the queue: {e}", status=2) from None


def _when(t):
    import time
    return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(t)) if t else "-"


def run_queue(args, out, path):
    from jdmail.queue.store import QueueError
    store = open_queue(path)
    try:
        action = args.action
        try:
            if action == "list":
                messages = store._list()
                for m in messages:
                    flags = " held" if m.held else ""
                    out.write(f"{m.queue_id} {m.size} {_when(m.arrived)} <{m.sender}>{flags}\n")
                    for r in m.recipients:
                        error = f" {r.last_error}" if r.last_error else ""
                        out.write(f"    {r.address} {r.state} attempts={r.attempts} "
                                  f"next={_when(r.next_attempt)}{error}\n")
                out.write(f"{len(messages)} message(s)\n")
            elif action == "show":
                m = store._get_one(args.queue_id)
                if m is None:
                    raise CtlError(f"{args.queue_id} is not queued")
                out.write(f"id: {m.queue_id}\nsender: <{m.sender}>\narrived: {_when(m.arrived)}\n"
                          f"size: {m.size}\nheld: {'yes' if m.held else 'no'}\n"
                          f"warned: {'yes' if m.warned else 'no'}\n")
                if m.ret or m.envid:
                    out.write(f"ret: {m.ret or '-'}\nenvid: {m.envid or '-'}\n")
                for r in m.recipients:
                    out.write(f"recipient: {r.address} state={r.state} attempts={r.attempts} "
                              f"next={_when(r.next_attempt)}"
                              + (f" notify={','.join(r.notify)}" if r.notify else "")
                              + (f" orcpt={r.orcpt}" if r.orcpt else "")
                              + (f" error={r.last_error}" if r.last_error else "") + "\n")
            elif action == "flush":
                out.write(f"flushed {store._flush(None, 0.0)} message(s)\n")
            elif action == "retry":
                if store._get_one(args.queue_id) is None:
                    raise CtlError(f"{args.queue_id} is not queued")
                store._flush(args.queue_id, 0.0)
                out.write(f"{args.queue_id} is due now\n")
            elif action in ("hold", "release"):
                if not store._set_flag(args.queue_id, "held", action == "hold"):
                    raise CtlError(f"{args.queue_id} is not queued")
                out.write(f"{'held' if action == 'hold' else 'released'} {args.queue_id}\n")
            elif action == "delete":
                if not store._delete(args.queue_id):
                    raise CtlError(f"{args.queue_id} is not queued")
                out.write(f"deleted {args.queue_id}\n")
        except QueueError as e:
            raise CtlError(str(e)) from None
    finally:
        store.close()
    return 0


def _size(option, text):
    from jdmail.options import parse_size
    if text is None:
        return None
    try:
        return parse_size(text)
    except ValueError as e:
        raise CtlError(f"{option} {e}") from None


def _count(option, text):
    if text is None:
        return None
    if not text.strip().isdigit():
        raise CtlError(f"{option} {text!r}: expected a whole number of 0 or more")
    return int(text)


def _words(text):
    return [w.strip() for w in text.split(",") if w.strip()]


def _quota_line(own, default, unit):
    if own:
        return f"{own}{unit} (the user's own)"
    if default:
        return f"{default}{unit} (domain default)"
    return "none"


def open_store(path):
    """The configured message store, or None when it cannot be built here."""
    from jdmail import config as config_module
    from jdmail.services import Services
    try:
        config = config_module.load(path)
        factory, settings = config.components["store"]
        services = Services(reactor=None, config=config, hostname=config.hostname,
                            datadir=config.datadir, threadpool=None)
        return factory.build("store", settings, services)
    except Exception:
        return None


def run_user_settings(directory, args, out, path):
    """user show / user set."""
    from jdmail.address import domain_of, normalize
    name = normalize(args.address)
    if args.action == "set":
        changes = dict(quota_bytes=_size("--quota", args.quota),
                       quota_messages=_count("--quota-messages", args.quota_messages),
                       enabled=args.enabled, keep_copy=args.keep_copy,
                       protocols=None if args.protocols is None else _words(args.protocols),
                       forward=None if args.forward is None else _words(args.forward))
        if all(v is None for v in changes.values()):
            raise CtlError("nothing to change: give at least one option (see jdmailctl user set -h)", status=2)
        directory.set_user(name, **changes)
        out.write(f"changed user {name}\n")
        return 0
    user = directory.get_user(name)
    if user is None:
        raise CtlError(f"{name} is not a user")
    write_user(out, user, directory.get_domain(domain_of(user.address)), path)
    return 0


def write_user(out, user, domain, path):
    """The lines of ``user show``: a UserRecord, its DomainRecord (or None) and the
    mailbox usage counted in the configured store."""
    from jdmail.directory.service import mailbox_key
    mailbox = user.mailbox or mailbox_key(user.address)
    store = open_store(path)
    disk_usage = getattr(store, "disk_usage", None)
    if disk_usage is None:
        usage = "unknown (the message store cannot tell from here)"
    else:
        try:
            size, count = disk_usage(mailbox)
            usage = f"{size} bytes, {count} messages"
        except (OSError, ValueError) as e:
            usage = f"unknown ({e})"
    forward = ", ".join(user.forward) if user.forward else "none"
    if user.forward:
        forward += " (a copy is kept)" if user.keep_copy else " (no copy is kept)"
    out.write(f"address: {user.address}\n"
              f"enabled: {'yes' if user.enabled else 'no'}\n"
              f"protocols: {', '.join(sorted(user.protocols)) or 'none'}\n"
              f"quota: {_quota_line(user.quota_bytes, domain and domain.quota_bytes, ' bytes')}\n"
              f"quota_messages: {_quota_line(user.quota_messages, domain and domain.quota_messages, ' messages')}\n"
              f"usage: {usage}\n"
              f"forward: {forward}\n"
              f"mailbox: {mailbox}\n")


def run_domain_settings(directory, args, out):
    """domain show / domain set."""
    from jdmail.address import normalize_domain
    name = normalize_domain(args.domain)
    if args.action == "set":
        quota, messages = _size("--quota", args.quota), _count("--quota-messages", args.quota_messages)
        if quota is None and messages is None:
            raise CtlError("nothing to change: give --quota and/or --quota-messages", status=2)
        directory.set_domain(name, quota_bytes=quota, quota_messages=messages)
        out.write(f"changed domain {name}\n")
        return 0
    domain = directory.get_domain(name)
    if domain is None:
        raise CtlError(f"{name} is not a local domain")
    write_domain(out, domain)
    return 0


def write_domain(out, domain):
    """The lines of ``domain show`` for a DomainRecord."""
    if domain.alias_of:
        out.write(f"domain: {domain.name}\nalias of: {domain.alias_of}\n")
        return
    out.write(f"domain: {domain.name}\n"
              f"default quota: {f'{domain.quota_bytes} bytes' if domain.quota_bytes else 'none'}\n"
              f"default quota_messages: "
              f"{f'{domain.quota_messages} messages' if domain.quota_messages else 'none'}\n")


def run_group(directory, args, out):
    """group add|remove|list|show|set|member|sender."""
    action = args.action
    if action == "add":
        name = directory.add_group(args.address, args.members, args.members_only)
        members = f" with {len(args.members)} member(s)" if args.members else ""
        out.write(f"added group {name}{members}\n")
    elif action == "remove":
        out.write(f"removed group {directory.remove_group(args.address)}\n")
    elif action == "list":
        for address, count, only in directory.list_groups(args.domain):
            out.write(f"{address} {count} {'members-only' if only else 'anyone'}\n")
    elif action == "show":
        group = directory.get_group(args.address)
        if group is None:
            from jdmail.address import normalize
            raise CtlError(f"{normalize(args.address)} is not a group")
        write_group(out, group)
    elif action == "set":
        name = directory.set_group(args.address, args.members_only)
        out.write(f"{name}: {'members only may post' if args.members_only else 'anyone may post'}\n")
    else:
        verb = args.subaction
        method = getattr(directory, f"{verb}_group_{action}")
        name = method(args.address, args.value)
        word = "member" if action == "member" else "allowed sender"
        out.write(f"{'added' if verb == 'add' else 'removed'} {word} {args.value.strip()} "
                  f"{'to' if verb == 'add' else 'from'} {name}\n")


def write_group(out, group):
    """The lines of ``group show`` for a GroupRecord."""
    out.write(f"group: {group.address}\n"
              f"posting: {'members and allowed senders only' if group.members_only else 'anyone'}\n")
    for member in group.members:
        out.write(f"member: {member}\n")
    for sender in group.senders:
        out.write(f"sender: {sender}\n")


def run_dkim(args, out, path):
    """jdmailctl dkim genkey|record|list: keys under <datadir>/dkim (see jdmail.filters.dkim_keys)."""
    from jdmail import config as config_module
    from jdmail.errors import ConfigErrors
    from jdmail.filters import dkim_keys

    try:
        datadir = config_module.load(path).datadir
    except ConfigErrors as e:
        raise CtlError("\n".join(str(err) for err in e.errors), status=2) from None
    try:
        if args.action == "genkey":
            out.write(dkim_keys.generate_key(datadir, args.domain, args.selector, args.bits) + "\n")
        elif args.action == "record":
            current = dkim_keys.current_key(datadir, args.domain)
            if current is None:
                raise CtlError(f"{args.domain} has no DKIM key (create one with: jdmailctl dkim genkey "
                               f"{args.domain})")
            selector, pem = current
            out.write(dkim_keys.dns_record(args.domain.lower().rstrip("."), selector,
                                           dkim_keys.public_key_b64(pem)) + "\n")
        else:
            for domain, selector, current in dkim_keys.list_keys(datadir):
                out.write(f"{domain} {selector}{' current' if current else ''}\n")
    except (dkim_keys.DKIMKeyError, OSError) as e:
        raise CtlError(str(e)) from None
    return 0


def open_bayes(path, name=None, want_settings=False):
    """(Classifier, where) for the configured bayes filter (``[filter:NAME]``, default the
    first section of kind bayes, else the defaults), with its settings third when
    ``want_settings``; CtlError(status=2) on problems."""
    from jdmail import config as config_module
    from jdmail.bayes.classifier import Classifier
    from jdmail.bayes.store import StoreError, open_store
    from jdmail.errors import ConfigError, ConfigErrors
    from jdmail.filters import bayes
    from jdmail.registry import RegistryError

    try:
        config = config_module.load(path)
    except ConfigErrors as e:
        raise CtlError("\n".join(str(err) for err in e.errors), status=2) from None
    except RegistryError as e:
        raise CtlError(str(e), status=2) from None
    sections = [s for s, (factory, _settings) in sorted(config.components.items())
                if s.startswith("filter:") and factory.kind == "bayes"]
    if name is not None:
        if f"filter:{name}" not in sections:
            raise CtlError(f"--filter {name}: there is no [filter:{name}] section of type bayes", status=2)
        settings = config.components[f"filter:{name}"][1]
    elif sections:
        settings = config.components[sections[0]][1]
    else:
        settings = {k: o.default for k, o in bayes.OPTIONS.items()}
    mysql = None
    if not settings["database"]:
        from jdmail.filters.statedb import mysql_state
        try:
            mysql = mysql_state(config, "bayes")
        except ConfigError as e:
            raise CtlError(str(e), status=2) from None
    try:
        store = open_store(settings["database"], config.datadir, mysql)
    except StoreError as e:
        raise CtlError(str(e), status=2) from None
    classifier = Classifier(store, bayes.params(settings))
    return (classifier, store.where, settings) if want_settings else (classifier, store.where)


def run_bayes_expire(args, out, path):
    """bayes expire: prune the token tables now."""
    from jdmail.bayes.expiry import DAY, expire
    from jdmail.bayes.store import StoreError
    from jdmail.options import parse_duration
    owner = None
    if args.user:
        owner = _bayes_owner(args.user)
    if args.max_count is not None and args.max_count < 0:
        raise CtlError("--max-count: expected a number of messages, 0 or more", status=2)
    max_age = None
    if args.older_than is not None:
        try:
            max_age = parse_duration(args.older_than)
        except ValueError as e:
            raise CtlError(f"--older-than: {e}", status=2) from None
    classifier, where, settings = open_bayes(path, args.filter, want_settings=True)
    try:
        max_age = settings["token_expiry"] if max_age is None else max_age
        if max_age <= 0:
            raise CtlError("token_expiry is 0 (never) here: give --older-than DURATION", status=2)
        max_count = settings["expiry_max_count"] if args.max_count is None else args.max_count
        deleted = expire(classifier.store, max_age, max_count, owner)
        out.write(f"deleted {deleted} token(s) not trained for {max_age / DAY:g} days and seen in at most "
                  f"{max_count} message(s) from {owner or 'every table'} in {where}\n")
    except StoreError as e:
        raise CtlError(str(e)) from None
    finally:
        classifier.store.close()
    return 0


def _bayes_owner(text):
    from jdmail.address import AddressError, check_mailbox, normalize
    try:
        check_mailbox(text.strip())
    except AddressError as e:
        raise CtlError(f"--user: bad address: {e}", status=2) from None
    return normalize(text.strip())


def run_bayes(args, out, path):
    from jdmail.bayes.sources import SourceError, read_messages
    from jdmail.bayes.store import StoreError
    if args.action == "expire":
        return run_bayes_expire(args, out, path)
    if args.action == "train" and not (args.spam or args.ham):
        raise CtlError("bayes train needs --spam PATH and/or --ham PATH", status=2)
    owner = ""
    if args.action == "train" and args.user:
        owner = _bayes_owner(args.user)
    for source in (getattr(args, "spam", []) or []) + (getattr(args, "ham", []) or []):
        if not os.path.exists(source):
            raise CtlError(f"{source}: no such file or directory", status=2)
    classifier, where = open_bayes(path, args.filter)
    try:
        if args.action == "stats":
            out.write(f"database: {where}\n")
            rows = classifier.store.stats()
            for who, nspam, nham, ntokens in rows:
                out.write(f"{who or 'global'}: {nspam} spam, {nham} ham, {ntokens} tokens\n")
            if not rows:
                out.write("nothing trained yet\n")
            return 0
        for label, paths in (("spam", args.spam), ("ham", args.ham)):
            for source in paths:
                total = changed = 0
                batch = []
                try:
                    for data in read_messages(source):
                        batch.append((data, label == "spam"))
                        total += 1
                        if len(batch) >= 200:
                            changed += classifier.learn_many(batch, owner)
                            batch = []
                    changed += classifier.learn_many(batch, owner)
                except SourceError as e:
                    raise CtlError(str(e)) from None
                except OSError as e:
                    raise CtlError(f"{source}: {e.strerror or e}") from None
                known = total - changed
                out.write(f"trained {changed} {label} message(s) from {source}"
                          + (f" ({known} already trained as {label})" if known else "")
                          + f" into {'the table of ' + owner if owner else 'the global table'}\n")
        nspam, nham = classifier.store.totals(owner)
        out.write(f"{owner or 'global'}: {nspam} spam, {nham} ham\n")
    except StoreError as e:
        raise CtlError(str(e)) from None
    finally:
        classifier.store.close()


def run_db(args, out, path):
    """jdmailctl db init|upgrade: create or upgrade the directory's schema."""
    if getattr(args, "filters_only", False):
        return run_db_filters(out, path)
    directory = open_directory(path)
    backend = getattr(directory, "backend", directory)
    try:
        action = getattr(backend, f"schema_{args.action}", None)
        if action is None:
            raise CtlError(f"the {getattr(backend, 'dialect', None) and backend.dialect.name or 'configured'} "
                           "directory creates and upgrades its schema itself when it is opened "
                           "(db init and upgrade are for mysql)", status=2)
        out.write(action() + "\n")
    finally:
        close = getattr(backend, "close", None)
        if close is not None:
            close()
    return 0


def run_db_filters(out, path):
    """jdmailctl db init --filters-only: jdmail's greylist and Bayes tables in a MySQL
    database read through user_query (jdmail's own schema has them already)."""
    import pymysql
    from jdmail.directory.mysqlpool import connect_kwargs, describe
    from jdmail.errors import ConfigError
    from jdmail.filters.statedb import FILTER_TABLES, create_filter_tables

    config = _load_config(path)
    factory, settings = config.components["directory"]
    if factory.kind != "mysql" or not settings.get("user_query"):
        raise CtlError("db init --filters-only is for a mysql directory read through user_query; "
                       + ("jdmail's own schema has these tables (jdmailctl db init or db upgrade)"
                          if factory.kind == "mysql" else
                          f"with the {factory.kind!r} directory the filters keep their state in SQLite "
                          "in the data directory"), status=2)
    try:
        kwargs = connect_kwargs(settings, config.path)
    except ConfigError as e:
        raise CtlError(str(e), status=2) from None
    try:
        with pymysql.connect(**kwargs) as conn, conn.cursor() as cur:
            create_filter_tables(cur)
            conn.commit()
    except pymysql.err.MySQLError as e:
        raise CtlError(f"cannot create the filter tables: {describe(e)}") from None
    out.write(f"created jdmail's filter tables ({', '.join(FILTER_TABLES)}) where missing in the database "
              f"{kwargs['database']!r}; its other tables are unchanged\n")
    return 0


def _load_config(path):
    from jdmail import config as config_module
    from jdmail.errors import ConfigErrors
    from jdmail.registry import RegistryError
    try:
        return config_module.load(path)
    except ConfigErrors as e:
        raise CtlError("\n".join(str(err) for err in e.errors), status=2) from None
    except RegistryError as e:
        raise CtlError(str(e), status=2) from None


def _run_in_reactor(make_coroutine):
    """Run an async function under a reactor (jdmailctl is otherwise synchronous)."""
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred
    outcome = []

    def go():
        d = Deferred.fromCoroutine(make_coroutine(reactor))
        d.addBoth(outcome.append)
        d.addBoth(lambda _: reactor.stop())
    reactor.callWhenRunning(go)
    reactor.run(installSignalHandlers=False)
    result = outcome[0]
    if hasattr(result, "raiseException"):
        result.raiseException()
    return result


def release_quarantined(config, quarantine, record):
    """Deliver a quarantined message to its original recipients (local mailboxes,
    the outbound queue for remote ones), as the server would have."""
    from twisted.python.threadpool import ThreadPool
    from jdmail.delivery.local import LocalDelivery
    from jdmail.queue.store import QueueStore
    from jdmail.services import Services

    envelope = quarantine.envelope(record)
    path = quarantine.message_path(record["id"])
    pool = ThreadPool(minthreads=1, maxthreads=2, name="jdmailctl")

    async def work(reactor):
        services = Services(reactor=reactor, config=config, hostname=config.hostname,
                            datadir=config.datadir, threadpool=pool)
        factory, settings = config.components["store"]
        store = factory.build("store", settings, services)
        queue = None
        if LocalDelivery.remote_addresses(envelope):
            queue = QueueStore(os.path.join(config.datadir, "queue"), services,
                               config["queue"]["min_backoff"], config["queue"]["max_backoff"])
        try:
            await LocalDelivery(store, queue).deliver(envelope, path)
        finally:
            if queue is not None:
                queue.close()
            if hasattr(store, "close"):
                store.close()

    pool.start()
    try:
        _run_in_reactor(work)
    finally:
        pool.stop()
    return envelope


def run_quarantine(args, out, path):
    from jdmail.filters.quarantine import Quarantine, QuarantineError
    config = _load_config(path)
    quarantine = Quarantine(os.path.join(config.datadir, "quarantine"))
    try:
        if args.action == "list":
            records = quarantine.list()
            for r in records:
                rcpts = ",".join(x["address"] for x in r["recipients"])
                out.write(f"{r['id']} {_when(r['arrived'])} {r['size']} <{r['sender']}> {rcpts} "
                          f"{'; '.join(r['reasons']) or '-'}\n")
            out.write(f"{len(records)} message(s)\n")
            return 0
        record = quarantine.get(args.quarantine_id)
        if args.action == "show":
            out.write(f"id: {record['id']}\narrived: {_when(record['arrived'])}\nsize: {record['size']}\n"
                      f"sender: <{record['sender']}>\nclient: {record['client_ip']} helo={record['helo']}"
                      f" auth={record['auth_user'] or '-'}\n")
            for r in record["recipients"]:
                out.write(f"recipient: {r['address']}\n")
            for reason in record["reasons"]:
                out.write(f"reason: {reason}\n")
            out.write("\n")
            with open(quarantine.message_path(record["id"]), "rb") as f:
                for line in f:
                    if line in (b"\r\n", b"\n"):
                        break
                    out.write(line.decode("utf-8", "replace").rstrip("\r\n") + "\n")
        elif args.action == "release":
            envelope = release_quarantined(config, quarantine, record)
            quarantine.delete(record["id"])
            out.write(f"released {record['id']} to {', '.join(a for a, _r in envelope.recipients)}\n")
        elif args.action == "delete":
            quarantine.delete(record["id"])
            out.write(f"deleted {record['id']}\n")
    except QuarantineError as e:
        raise CtlError(str(e)) from None
    return 0


def run(args, out):
    """Carry out one parsed command, writing its output lines to ``out``."""
    from jdmail.interfaces import IDirectoryAdmin
    from jdmail.options import parse_size

    path = args.config if args.config is not None else (os.environ.get("JDMAIL_CONFIG") or None)
    if args.group == "plugins":
        return list_plugins(path, out)
    if args.group == "queue":
        return run_queue(args, out, path)
    if args.group == "dkim":
        return run_dkim(args, out, path)
    if args.group == "bayes":
        return run_bayes(args, out, path)
    if args.group == "quarantine":
        return run_quarantine(args, out, path)
    if args.group == "db":
        return run_db(args, out, path)
    group, action = args.group, args.action
    directory = open_directory(path, read_only_ok=(group, action) in SHOW_COMMANDS)
    if not IDirectoryAdmin.providedBy(directory):
        return run_show_lookup(args, out, path)

    if group == "domain" and action in ("set", "show"):
        return run_domain_settings(directory, args, out)
    if group == "user" and action in ("set", "show"):
        return run_user_settings(directory, args, out, path)
    if group == "group":
        return run_group(directory, args, out)
    if group == "domain":
        if action == "add":
            out.write(f"added domain {directory.add_domain(args.domain)}\n")
        elif action == "remove":
            out.write(f"removed domain {directory.remove_domain(args.domain)}\n")
        else:
            for name in directory.list_domains():
                out.write(f"{name}\n")
    elif group == "user":
        if action == "add":
            try:
                quota = parse_size(args.quota)
            except ValueError as e:
                raise CtlError(f"--quota {e}") from None
            messages = _count("--quota-messages", args.quota_messages)
            # refuse a bad address before asking for a password
            from jdmail.address import AddressError, check_mailbox
            try:
                check_mailbox(args.address.strip())
            except AddressError as e:
                raise CtlError(f"bad address: {e}") from None
            name = directory.add_user(args.address, _hash(args, directory), quota)
            if messages:
                directory.set_user(name, quota_messages=messages)
            out.write(f"added user {name}\n")
        elif action == "passwd":
            from jdmail.address import domain_of, normalize
            name = normalize(args.address)
            if not any(a == name for a, _, _ in directory.list_users(domain_of(name))):
                raise CtlError(f"{name} is not a user")
            out.write(f"changed the password of {directory.set_password(args.address, _hash(args, directory))}\n")
        elif action == "remove":
            out.write(f"removed user {directory.remove_user(args.address)} (its mail is kept)\n")
        else:
            for address, quota, enabled in directory.list_users(args.domain):
                out.write(f"{address} {quota} {'enabled' if enabled else 'disabled'}\n")
    else:
        if action == "add":
            source, targets = directory.add_alias(args.source, args.targets)
            out.write(f"added alias {source} -> {', '.join(targets)}\n")
        elif action == "remove":
            directory.remove_alias(args.source, args.target)
            what = f"{args.source.strip()} -> {args.target.strip()}" if args.target else args.source.strip()
            out.write(f"removed alias {what}\n")
        else:
            for source, target in directory.list_aliases(args.domain):
                out.write(f"{source} {target}\n")
    return 0


def main(argv=None):
    """Entry point of the jdmailctl console script; returns the exit status."""
    args = build_parser().parse_args(argv)
    from jdmail.errors import DirectoryError, DirectoryUnavailable
    from jdmail.address import AddressError
    try:
        return run(args, sys.stdout)
    except CtlError as e:
        for line in str(e).splitlines() or [""]:
            print(f"{PROG}: {line}", file=sys.stderr)
        return e.status
    except (DirectoryError, DirectoryUnavailable, AddressError) as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted", file=sys.stderr)
        return 1
    except Exception as e:              # never a traceback for the admin
        print(f"{PROG}: unexpected error: {type(e).__name__}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
