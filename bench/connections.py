"""Connections: memory of ``--sizes`` idle authenticated IMAP sessions (LOGIN,
SELECT INBOX, IDLE) -> jdmail vs a private Dovecot. For each size and round the
server is restarted (a clean baseline), one session warms it up, the baseline
is taken, the sessions are opened (32 logins at a time), and after
``--settle`` seconds the memory of every server process (Dovecot: master,
auth, imap-login, imap, imap-hibernate, ...) is sampled three times.

Dovecot runs in its documented high-performance login mode (``service_count =
0``, one long-lived imap-login per CPU, ``client_limit`` raised) and, unless
``--dovecot-no-hibernate``, with ``imap_hibernate_timeout = 5s``: sessions in
IDLE leave their imap process for the shared imap-hibernate process, which is
how Dovecot is meant to hold many idle clients. jdmail gets the same 5 s as
``[imap] hibernate_timeout`` (default 30 s: its own hibernation of quiet sessions)
and ``[store] index_idle_timeout`` (default 10 s: a mailbox nobody has used for
that long has its SQLite index closed while its sessions idle); ``--jdmail-set``
overrides either.
"""

import asyncio
import os

from bench import harness, imapload, maildata, servers
from bench.imap import password_hash
from bench.measure import Meter, median, say
from bench.report import Row

DOMAIN = "example.org"
PASSWORD = "bench-Passw0rd"
SERVERS = ("jdmail", "dovecot")


def _sizes(text):
    try:
        out = [int(x.replace("_", "").replace(",", "")) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise ValueError(f"not a list of numbers: {text!r}") from None
    if not out or min(out) < 1:
        raise ValueError("sizes must be positive")
    return out


def add_options(p):
    p.add_argument("--sizes", type=_sizes, default=[1000, 10000],
                   help="idle session counts, comma-separated (default 1000,10000)")
    p.add_argument("--per-user", type=int, default=5, help="idle sessions per user (default 5)")
    p.add_argument("--settle", type=float, default=8.0,
                   help="seconds after the last login before memory is sampled (default 8: Dovecot hibernates "
                        "IDLE sessions after 5 s)")
    p.add_argument("--open-limit", type=float, default=1200,
                   help="seconds allowed for opening one size's sessions; those still not open are given up and "
                        "the run is reported (JSON 'partial') but not counted (default 1200)")
    p.add_argument("--dovecot-no-hibernate", action="store_true",
                   help="no imap_hibernate: one Dovecot imap process per session")
    p.add_argument("--servers", default="jdmail,dovecot", help="comma-separated: jdmail, dovecot (default both)")
    p.add_argument("--hash", default="SHA512-CRYPT", choices=("BLF-CRYPT", "SHA512-CRYPT", "PLAIN"),
                   help="password scheme on both servers (default SHA512-CRYPT)")


def smoke(args):
    args.sizes, args.rounds, args.servers, args.settle = [20], 1, "jdmail", 1.0


def check_args(args, error):
    if args.per_user < 1:
        error("--per-user must be at least 1")


def packages(args):
    return ["dovecot-imapd"] if "dovecot" in args.servers else []


def measure(t, users, count, settle, nofile, limit=1200):
    """Restart ``t``, open ``count`` idle sessions; memory and login figures."""
    t.restart(nofile)
    pid = t.pid()

    async def go():
        warm = await imapload.Client.connect(t.port)
        await warm.login(users[0], PASSWORD)
        await warm.command(b"SELECT INBOX")
        await warm.logout()
        await asyncio.sleep(1.0)
        base = servers.tree_memory(pid)
        meter = Meter([pid]).start()
        clients, secs, errors = await imapload.open_idle(t.port, users, PASSWORD, count, limit=limit)
        meter.stop()
        await asyncio.sleep(settle)
        samples = []
        for _ in range(3):
            samples.append(servers.tree_memory(pid))
            await asyncio.sleep(0.5)
        idling = sum(1 for c in clients if c.idling)
        await imapload.close_all(clients)
        return base, meter, len(clients), idling, secs, errors, samples

    base, meter, opened, idling, secs, errors, samples = asyncio.run(go())
    peak = max(samples, key=lambda m: m["rss"])
    return {
        "sessions": count, "opened": opened, "idling": idling, "login_seconds": secs,
        "logins_per_s": opened / secs if secs else None,
        "login_cpu_per_1000": 1000 * meter.cpu / opened if opened else None,
        "login_peak_rss": meter.peak_rss,
        "errors": errors[:5], "error_count": len(errors), "baseline": base, "loaded": peak,
        "rss_total": peak["rss"], "pss_total": peak["pss"], "processes": peak["processes"],
        "rss_per_conn": (peak["rss"] - base["rss"]) / opened if opened else None,
        "pss_per_conn": (peak["pss"] - base["pss"]) / opened if opened else None,
    }


INOTIFY = "/proc/sys/fs/inotify/max_user_instances"


def raise_inotify(want):
    """Dovecot's imap processes each take an inotify instance (as the one mail user);
    past the kernel's per-user limit (128 on Debian) it warns "Increase
    max_user_instances", polls instead and cannot hibernate. Raise it (root only);
    return the old value to restore, or None."""
    try:
        with open(INOTIFY) as f:
            old = int(f.read())
        if old >= want or os.geteuid() != 0:
            return None
        with open(INOTIFY, "w") as f:
            f.write(str(want))
        say(f"{INOTIFY} raised from {old} to {want} for the run (Dovecot asks for it)")
        return old
    except (OSError, ValueError):
        return None


def restore_inotify(old):
    if old is not None:
        try:
            with open(INOTIFY, "w") as f:
                f.write(str(old))
        except OSError:
            pass


def run(args, tmp):
    biggest = max(args.sizes)
    old_inotify = raise_inotify(biggest + 1024) if "dovecot" in args.servers else None
    try:
        return _run(args, tmp)
    finally:
        restore_inotify(old_inotify)


def _run(args, tmp):
    biggest = max(args.sizes)
    nofile = servers.raise_nofile(2 * biggest + 4096)
    if nofile < biggest + 512:
        say(f"RLIMIT_NOFILE is {nofile}: sizes above {nofile - 512} dropped")
        args.sizes = [s for s in args.sizes if s <= nofile - 512] or [nofile - 512]
        biggest = max(args.sizes)
    users = [f"idle{i}@{DOMAIN}" for i in range(1, -(-biggest // args.per_user) + 1)]
    hashed = password_hash(args.hash, PASSWORD)
    targets = []
    for name in args.servers:
        root = os.path.join(tmp, name)
        os.makedirs(root)
        if name == "jdmail":
            # both as Dovecot's imap_hibernate_timeout
            settings = {"store": {"index_idle_timeout": "5s"}, "imap": {"hibernate_timeout": "5s"}}
            if not servers.jdmail_has_key("imap", "hibernate_timeout"):     # a checkout before it
                del settings["imap"]
            for section, kv in args.jdmail_settings.items():
                settings.setdefault(section, {}).update(kv)
            targets.append(servers.Jdmail(root, max_connections=biggest + 200, settings=settings))
        else:
            targets.append(servers.Dovecot(root, max_connections=biggest + 200, performance=True,
                                           hibernate=not args.dovecot_no_hibernate))
    status, running = {}, []
    title = (f"Connections: idle IMAP sessions (LOGIN, SELECT INBOX, IDLE), {args.per_user} per user; memory of "
             f"every server process {args.settle:g}s after the last login; RLIMIT_NOFILE {nofile}; "
             f"{args.rounds} round(s), medians")
    result = harness.result_skeleton("connections", title, {
        "sizes": args.sizes, "per_user": args.per_user, "settle": args.settle, "rounds": args.rounds,
        "dovecot_hibernate": not args.dovecot_no_hibernate, "hash": args.hash, "servers": args.servers,
        "smoke": args.smoke, "jdmail_settings": args.jdmail_settings, "nofile": nofile}, targets, status)
    try:
        uid, gid, _ = servers.mail_owner()
        template = os.path.join(tmp, "template", "Maildir")
        w = maildata.MaildirWriter(maildata.MessageFactory(args.seed), uid=uid, gid=gid, seed=args.seed)
        w.fill(template, users[0], 20, big_share=0.0)
        for t in targets:
            t.setup([(u, hashed) for u in users])
            for u in users:
                maildata.link_tree(template, t.maildir(u))
            t.prepare_mail()
        harness.start_all(targets, nofile, status, running)
        details = {t.name: {"runs": [], "errors": []} for t in running}
        result["details"] = details
        for rnd in range(args.rounds):
            for size in args.sizes:
                for t in harness.round_order(running, rnd):
                    tag = f"round {rnd + 1}/{args.rounds} {t.label}, {size:,} sessions"
                    try:
                        m = measure(t, users[:-(-size // args.per_user)], size, args.settle, nofile, args.open_limit)
                    except Exception as e:   # noqa: BLE001
                        details[t.name]["errors"].append(f"round {rnd + 1}, {size}: {e!r}")
                        say(f"{tag}: failed: {e!r}")
                        continue
                    say(f"{tag}: {m['opened']} open ({m['idling']} in IDLE) in {m['login_seconds']:.1f}s; "
                        f"RSS {m['rss_total'] / 2**20:.0f} MB, PSS {m['pss_total'] / 2**20:.0f} MB over "
                        f"{m['processes']} processes"
                        + (f"; {m['error_count']} failed, e.g. {m['errors'][0]}" if m["error_count"] else ""))
                    if m["error_count"]:
                        details[t.name]["errors"].append(f"round {rnd + 1}, {size}: {m['error_count']} "
                                                         f"problem(s), e.g. {m['errors'][-1]}")
                        details[t.name].setdefault("partial", []).append(m)     # in the JSON, not the medians
                    else:
                        details[t.name]["runs"].append(m)
        result["rows"] = rows(args, details)
        result["exit"] = harness.exit_code(details, running, targets)
        return result
    finally:
        for t in targets:
            t.stop()


def rows(args, details):
    spec = [("rss_total", "RSS, all server processes (sum)", "MB", 1 / 2**20),
            ("pss_total", "  PSS (shared pages split)", "MB", 1 / 2**20),
            ("rss_per_conn", "  RSS per session, minus baseline", "KB", 1 / 1024),
            ("pss_per_conn", "  PSS per session, minus baseline", "KB", 1 / 1024),
            ("processes", "  server processes", "", 1),
            ("logins_per_s", "  logins/s (LOGIN+SELECT+IDLE)", "/s", 1),
            ("login_cpu_per_1000", "  server CPU per 1,000 logins", "s", 1),
            ("login_peak_rss", "  peak RSS while logging in", "MB", 1 / 2**20)]
    better = {"logins_per_s": "higher", "processes": None}
    out = []
    for size in args.sizes:
        for field, label, unit, scale in spec:
            if not label.startswith(" "):
                label = f"{size:,} idle sessions: {label}"
            row = Row(f"conn{size}_{field}", label, unit, better.get(field, "lower"))
            for name, d in details.items():
                vals = [r[field] * scale for r in d["runs"] if r["sessions"] == size and r.get(field) is not None]
                row.add(name, median(vals), vals)
            out.append(row.as_dict())
    return out
