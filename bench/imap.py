"""The IMAP benchmark: jdmail and Dovecot side by side on identical generated mailboxes.

After a warm-up (every mailbox selected once, then the first, cold SELECT of
the big mailbox), ``--rounds`` rounds; each restarts every server and runs
each workload against every server in turn (the order alternates from round
to round); the table shows medians:

* memory: ``--idle`` logged-in sessions (SELECT INBOX, then IDLE when
  offered) -> RSS and PSS of all the server's processes minus the baseline;
* the ``--big`` mailbox: SELECT, ``UID FETCH 1:* (FLAGS)`` and
  ``SEARCH UNSEEN`` latency, in a first session after the restart and in a
  second one;
* mixed load: ``--clients`` sessions loop over a fixed mix of SELECT, FETCH
  headers, FETCH bodies, STORE flags, SEARCH, APPEND, STORE \\Deleted +
  EXPUNGE for ``--seconds`` -> operations/s, latency, server CPU per 1,000 ops.
"""

import asyncio
import math
import os
import random
import sys
import time

from bench import imapload, maildata, servers
from bench.measure import Meter
from bench.report import Row

PASSWORD = "bench-Passw0rd"
DOMAIN = "example.org"


def say(msg):
    print(f"bench: {msg}", file=sys.stderr, flush=True)


def add_options(p):
    p.add_argument("--clients", type=int, default=10, help="concurrent clients in the mixed load (default 10)")
    p.add_argument("--users", type=int, default=None, help="users with generated mailboxes (default: --clients)")
    p.add_argument("--seconds", type=float, default=30, help="length of one mixed-load run (default 30)")
    p.add_argument("--messages", type=int, default=200, help="messages per user mailbox (default 200)")
    p.add_argument("--big", type=int, default=100000, help="messages in the big mailbox (default 100000; 0 skips)")
    p.add_argument("--idle", type=int, default=1000,
                   help="idle logged-in connections for the memory figure (default 1000; 0 skips)")
    p.add_argument("--idle-per-user", type=int, default=5, help="idle connections per user (default 5)")
    p.add_argument("--no-idle-command", action="store_true", help="idle sessions do not send IDLE even when offered")
    p.add_argument("--servers", default="jdmail,dovecot", help="comma-separated: jdmail, dovecot (default both)")
    p.add_argument("--hash", default="SHA512-CRYPT", choices=("BLF-CRYPT", "SHA512-CRYPT", "PLAIN"),
                   help="password scheme stored for every user on both servers (default SHA512-CRYPT: a few ms; "
                        "BLF-CRYPT, jdmailctl's default, costs ~100 ms per login and makes 1,000 logins take minutes)")


SERVERS = ("jdmail", "dovecot")


def smoke(args):
    args.clients, args.seconds, args.messages, args.big = 2, 2.0, 20, 500
    args.idle, args.rounds, args.servers = 10, 1, "jdmail"


def check_args(args, error):
    args.users = args.users or args.clients
    for name in ("clients", "users", "messages"):
        if getattr(args, name) < 1:
            error(f"--{name} must be at least 1")
    if args.seconds <= 0:
        error("--seconds must be positive")


def packages(args):
    return ["dovecot-imapd"] if "dovecot" in args.servers else []


def password_hash(scheme, password):
    if scheme == "PLAIN":
        return "{PLAIN}" + password
    if scheme == "SHA512-CRYPT":
        import warnings
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", DeprecationWarning)
            import crypt
        return "{SHA512-CRYPT}" + crypt.crypt(password, crypt.mksalt(crypt.METHOD_SHA512))
    from jdmail.passwords import hash_password
    return hash_password(password, scheme)


def generate_mail(args, targets, users, big_user, idle_users):
    """Write every mailbox once into the first server's tree and hard-link it into the others'."""
    t0 = time.monotonic()
    factory = maildata.MessageFactory(args.seed)
    first = targets[0]
    w = maildata.MaildirWriter(factory, seed=args.seed)
    for u in users:
        w.fill(first.maildir(u), u, args.messages, big_share=0.05)
    if big_user:
        w.fill(first.maildir(big_user), big_user, args.big, big_share=0.01)
    if idle_users:
        template = os.path.join(first.root, "idle-template", "Maildir")
        w.fill(template, idle_users[0], 20, big_share=0.0)
        for u in idle_users:
            maildata.link_tree(template, first.maildir(u))
    for other in targets[1:]:
        maildata.link_tree(first.mailroot, other.mailroot)
    for t in targets:
        t.prepare_mail()
    say(f"generated {w.files} messages ({w.bytes / 1e6:.0f} MB) in {time.monotonic() - t0:.1f}s"
        + (f", hard-linked for {len(targets) - 1} more server(s)" if len(targets) > 1 else ""))
    return {"files": w.files, "bytes": w.bytes, "seconds": time.monotonic() - t0}


def append_messages(args):
    factory = maildata.MessageFactory(args.seed + 1)
    rng = random.Random(args.seed)
    return [factory.make(rng, "user1@example.org", 1_700_000_000 + i, big_share=0.0) for i in range(32)]


async def _warm(port, addresses, full=(), concurrency=16, timeout=300):
    """Select every mailbox once; in those of ``full`` also fetch every header and run
    a text SEARCH, as a mail client's first sync would (so both servers' caches are
    built before round 1 rather than during it)."""
    sem = asyncio.Semaphore(concurrency)
    errors = []
    full = set(full)

    async def one(a):
        async with sem:
            try:
                c = await imapload.Client.connect(port, timeout)
                c.timeout = timeout
                await asyncio.wait_for(c.login(a, PASSWORD), timeout)
                await c.command(b"SELECT INBOX")
                if a in full and c.exists:
                    await c.command(b"FETCH 1:* " + imapload.HEADER_FIELDS)
                    await c.command(b'SEARCH SUBJECT "invoice"')
                await c.logout()
            except Exception as e:   # noqa: BLE001
                errors.append(f"{a}: {e!r}")
    await asyncio.gather(*(one(a) for a in addresses))
    return errors


def run_mixed(srv, args, users, appends, round_no):
    pid = srv.pid()
    memory = Meter([pid]).start()      # only its peak memory sampler is used here
    try:
        r = asyncio.run(imapload.mixed_load(
            srv.port, users, PASSWORD, args.clients, args.seconds, appends, seed=f"{args.seed}:{round_no}:{srv.name}",
            probe=lambda: (servers.tree_cpu_seconds(pid), servers.system_busy_seconds())))
    finally:
        memory.stop()
    r["peak_rss"], r["peak_pss"] = memory.peak_rss, memory.peak_pss
    (cpu0, busy0), (cpu1, busy1) = r.pop("probe")
    busy = busy1 - busy0
    r["server_cpu_s"] = cpu1 - cpu0
    r["server_cpu_per_1000_ops"] = 1000 * r["server_cpu_s"] / r["ops"] if r["ops"] else None
    # CPU the rest of the machine used meanwhile (other programs): a noisy run shows here
    r["other_cpu_share"] = max(0.0, busy - r["server_cpu_s"] - r["generator_cpu_s"]) / r["seconds"] if r["seconds"] else None
    r["loadavg"] = servers.loadavg()
    return r


def run_idle(srv, args, idle_users):
    """Memory of ``args.idle`` idle sessions. Called on a freshly started server: one
    session is opened and closed first (code paths loaded), then the baseline."""
    pid = srv.pid()

    async def go():
        warm = await imapload.Client.connect(srv.port)
        await warm.login(idle_users[0], PASSWORD)
        await warm.command(b"SELECT INBOX")
        await warm.logout()
        await asyncio.sleep(1.0)
        base = servers.tree_memory(pid)
        clients, secs, errors = await imapload.open_idle(srv.port, idle_users, PASSWORD, args.idle,
                                                         idle_cmd=not args.no_idle_command)
        await asyncio.sleep(2.0)
        samples = []
        for _ in range(3):
            samples.append(servers.tree_memory(pid))
            await asyncio.sleep(0.5)
        idling = sum(1 for c in clients if c.idling)
        await imapload.close_all(clients)
        return base, len(clients), secs, errors, samples, idling

    base, opened, secs, errors, samples, idling = asyncio.run(go())
    peak = max(samples, key=lambda m: m["rss"])
    # let the server settle back before the next workload (bounded)
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and servers.tree_memory(pid)["processes"] > base["processes"]:
        time.sleep(0.2)
    return {
        "opened": opened, "login_seconds": secs, "errors": errors[:5], "error_count": len(errors),
        "idling": idling, "baseline": base, "loaded": peak,
        "rss_total": peak["rss"], "pss_total": peak["pss"],
        "rss_delta": peak["rss"] - base["rss"], "pss_delta": peak["pss"] - base["pss"],
        "rss_per_conn": (peak["rss"] - base["rss"]) / opened if opened else None,
        "pss_per_conn": (peak["pss"] - base["pss"]) / opened if opened else None,
    }


def run_big(srv, big_user):
    """Two sessions on the big mailbox: the first after the round's restart (the server
    reads its index back), then the steady state."""
    first = imapload.big_mailbox(srv.port, big_user, PASSWORD, None)
    again = imapload.big_mailbox(srv.port, big_user, PASSWORD, None)
    again["first_select_ms"] = first["select_ms"]
    again["first_fetch_flags_ms"] = first["fetch_flags_ms"]
    again["first_search_unseen_ms"] = first["search_unseen_ms"]
    return again


def run(args, tmp):
    nofile = servers.raise_nofile(max(4096, 2 * args.idle + 1024))
    if args.idle and nofile < args.idle + 256:
        say(f"RLIMIT_NOFILE is {nofile}: --idle lowered to {nofile - 256}")
        args.idle = max(0, nofile - 256)
    users = [f"user{i}@{DOMAIN}" for i in range(1, args.users + 1)]
    big_user = f"big@{DOMAIN}" if args.big else None
    idle_users = ([f"idle{i}@{DOMAIN}" for i in range(1, math.ceil(args.idle / max(1, args.idle_per_user)) + 1)]
                  if args.idle else [])
    everyone = users + ([big_user] if big_user else []) + idle_users
    hashed = password_hash(args.hash, PASSWORD)
    max_conn = args.idle + args.clients + 200

    targets = []
    for name in args.servers:
        root = os.path.join(tmp, name)
        os.makedirs(root)
        if name == "jdmail":
            targets.append(servers.Jdmail(root, max_connections=max_conn, settings=args.jdmail_settings))
        else:
            targets.append(servers.Dovecot(root, max_connections=max_conn))
    status = {}
    result = {"benchmark": "imap", "params": {
        "clients": args.clients, "users": args.users, "seconds": args.seconds, "messages": args.messages,
        "big": args.big, "idle": args.idle, "idle_per_user": args.idle_per_user, "rounds": args.rounds,
        "hash": args.hash, "mix": list(imapload.MIX), "servers": args.servers, "smoke": args.smoke,
        "jdmail_settings": args.jdmail_settings}}
    running = []
    try:
        for t in targets:
            t.setup([(a, hashed) for a in everyone])
        result["mail"] = generate_mail(args, targets, users, big_user, idle_users)
        for t in targets:
            try:
                t.start(nofile)
                running.append(t)
                status[t.name] = {"status": "ok", "version": t.version, "greeting": t.greeting}
                say(f"{t.label} listening on 127.0.0.1:{t.port}")
            except servers.NotServed as e:
                t.stop()
                status[t.name] = {"status": "IMAP not served", "version": t.version}
                say(str(e))
            except servers.ServerError as e:
                t.stop()
                status[t.name] = {"status": f"failed to start: {str(e).splitlines()[0]}", "version": t.version,
                                  "log": str(e)[-3000:]}
                say(f"{t.label} failed to start: {e}")
        result["servers"] = status
        result["order"] = [t.name for t in targets]
        result["labels"] = {t.name: t.label for t in targets}
        details = {t.name: {"mixed": [], "big": [], "idle": [], "errors": []} for t in running}
        result["details"] = details
        if not running:
            result["rows"] = []
            if args.smoke and status.get("jdmail", {}).get("status") == "IMAP not served":
                result["exit"] = 0
            else:
                result["exit"] = 1
            return result

        # warm-up: every mailbox selected once (index files built), then the cold big SELECT
        for t in running:
            t0 = time.monotonic()
            errs = asyncio.run(_warm(t.port, users + idle_users, full=users))
            if errs:
                details[t.name]["errors"].append(f"warm-up: {len(errs)} failed, e.g. {errs[0]}")
                say(f"{t.label}: warm-up: {len(errs)} sessions failed, e.g. {errs[0]}")
            say(f"{t.label}: warm-up of {len(users) + len(idle_users)} mailboxes in {time.monotonic() - t0:.1f}s")
        if big_user:
            for t in running:
                try:
                    cold = imapload.big_mailbox(t.port, big_user, PASSWORD, args.big)
                    details[t.name]["big_cold"] = cold
                    say(f"{t.label}: {args.big}-message mailbox, first SELECT {cold['select_ms']:.0f} ms, "
                        f"UID FETCH 1:* (FLAGS) {cold['fetch_flags_ms']:.0f} ms, SEARCH UNSEEN {cold['search_unseen_ms']:.0f} ms")
                except Exception as e:   # noqa: BLE001
                    details[t.name]["errors"].append(f"big mailbox (cold): {e!r}")
                    say(f"{t.label}: big mailbox (cold) failed: {e!r}")

        appends = append_messages(args)
        for rnd in range(args.rounds):
            order = running if rnd % 2 == 0 else list(reversed(running))
            tag = f"round {rnd + 1}/{args.rounds}"
            for t in list(order):            # every round starts from fresh server processes
                try:
                    t.restart(nofile)
                except servers.ServerError as e:
                    details[t.name]["errors"].append(f"restart before round {rnd + 1}: {str(e)[:500]}")
                    say(f"{tag} {t.label}: restart failed: {e}")
                    running.remove(t)
                    order.remove(t)
            if args.idle:
                for t in order:
                    try:
                        i = run_idle(t, args, idle_users)
                        details[t.name]["idle"].append(i)
                        say(f"{tag} {t.label}: {i['opened']} idle sessions "
                            f"({i['idling']} in IDLE) in {i['login_seconds']:.1f}s: +{i['rss_delta'] / 2**20:.0f} MB RSS, "
                            f"+{i['pss_delta'] / 2**20:.0f} MB PSS over {i['loaded']['processes']} processes "
                            f"(totals {i['rss_total'] / 2**20:.0f} MB RSS, {i['pss_total'] / 2**20:.0f} MB PSS)"
                            + (f"; {i['error_count']} failed, e.g. {i['errors'][0]}" if i["error_count"] else ""))
                        if i["error_count"]:
                            details[t.name]["errors"].append(f"idle round {rnd + 1}: {i['error_count']} sessions failed, "
                                                             f"e.g. {i['errors'][0]}")
                    except Exception as e:   # noqa: BLE001
                        details[t.name]["errors"].append(f"idle round {rnd + 1}: {e!r}")
                        say(f"{tag} {t.label}: idle connections failed: {e!r}")
            if big_user:
                for t in order:
                    try:
                        b = run_big(t, big_user)
                        details[t.name]["big"].append(b)
                        say(f"{tag} {t.label}: big mailbox SELECT {b['first_select_ms']:.0f} ms after restart, "
                            f"then SELECT {b['select_ms']:.0f} ms, UID FETCH 1:* (FLAGS) {b['fetch_flags_ms']:.0f} ms, "
                            f"SEARCH UNSEEN {b['search_unseen_ms']:.0f} ms")
                    except Exception as e:   # noqa: BLE001
                        details[t.name]["errors"].append(f"big mailbox round {rnd + 1}: {e!r}")
                        say(f"{tag} {t.label}: big mailbox failed: {e!r}")
            for t in order:
                try:
                    m = run_mixed(t, args, users, appends, rnd)
                    details[t.name]["mixed"].append(m)
                    say(f"{tag} {t.label}: mixed load {m['ops_per_s']:.0f} ops/s "
                        f"(p50 {m['p50_ms']:.1f} ms, p99 {m['p99_ms']:.1f} ms, NO {m['no']}, BAD {m['bad']}, "
                        f"server CPU {m['server_cpu_s']:.1f}s, generator CPU {100 * m['generator_cpu_share']:.0f}% of a core, "
                        f"other programs {100 * m['other_cpu_share']:.0f}% of a core)")
                    if m["client_errors"]:
                        say(f"  {len(m['client_errors'])} client(s) failed, e.g. {m['client_errors'][0]}")
                        details[t.name]["errors"].append(f"mixed load round {rnd + 1}: {len(m['client_errors'])} "
                                                         f"client(s) failed, e.g. {m['client_errors'][0]}")
                except Exception as e:   # noqa: BLE001
                    details[t.name]["errors"].append(f"mixed load round {rnd + 1}: {e!r}")
                    say(f"{tag} {t.label}: mixed load failed: {e!r}")
        result["checks"] = cross_check(details)
        for line in result["checks"]:
            say(line)
        result["rows"] = rows(args, details)
        failed = (any(details[t.name]["errors"] for t in running)
                  or any("DIFFER" in c or "different answers" in c for c in result["checks"]))
        result["exit"] = 1 if failed else 0
        return result
    finally:
        for t in targets:
            t.stop()


def cross_check(details):
    """Both servers must give the same answers on the big mailbox: message count,
    FETCH lines, UNSEEN count and the spread of flags."""
    seen = {}
    for name, d in details.items():
        answers = [d["big_cold"]] if d.get("big_cold") else []
        answers += d.get("big", [])
        for a in answers:
            key = (a.get("exists"), a.get("fetched"), a.get("unseen"), tuple(sorted(a.get("flags", {}).items())))
            seen.setdefault(name, set()).add(key)
    if not seen:
        return []
    out = []
    for name, keys in seen.items():
        if len(keys) > 1:
            out.append(f"check: {name} gave different answers on the big mailbox from one session to the next: {sorted(keys)[:2]}")
    distinct = {k for keys in seen.values() for k in keys}
    if len(seen) > 1 and len(distinct) > 1:
        for name, keys in seen.items():
            k = sorted(keys)[0]
            out.append(f"check: big mailbox answers DIFFER: {name}: {k[0]} messages, {k[1]} FETCH lines, "
                       f"{k[2]} unseen, flags {dict(k[3])}")
    elif len(distinct) == 1:
        k = next(iter(distinct))
        out.append(f"check: big mailbox answers agree{' on every server' if len(seen) > 1 else ''}: {k[0]} messages, "
                   f"{k[1]} FETCH lines, {k[2]} unseen, flags {dict(k[3])}")
    return out


def _med(details, name, part, key):
    vals = [d.get(key) for d in details.get(name, {}).get(part, []) if d.get(key) is not None]
    return imapload.median(vals), vals


def rows(args, details):
    """The table: one Row per figure with each server's median and its rounds."""
    spec = [
        ("mixed_ops_per_s", f"mixed load, {args.clients} clients, {args.seconds:g}s", "ops/s", "higher", "mixed", "ops_per_s", 1),
        ("mixed_p50_ms", "  latency p50", "ms", "lower", "mixed", "p50_ms", 1),
        ("mixed_p99_ms", "  latency p99", "ms", "lower", "mixed", "p99_ms", 1),
        ("mixed_cpu_per_1000", "  server CPU per 1,000 ops", "s", "lower", "mixed", "server_cpu_per_1000_ops", 1),
        ("mixed_peak_rss_mb", "  peak RSS, all server processes (sum)", "MB", "lower", "mixed", "peak_rss", 1 / 2**20),
        ("mixed_peak_pss_mb", "  PSS then (shared pages split)", "MB", "lower", "mixed", "peak_pss", 1 / 2**20),
        ("mixed_generator_cpu", "  load generator CPU", "% core", None, "mixed", "generator_cpu_share", 100),
        ("mixed_other_cpu", "  other programs' CPU meanwhile", "% core", None, "mixed", "other_cpu_share", 100),
    ]
    if args.big:
        spec += [
            ("big_select_cold_ms", f"{args.big:,}-msg mailbox: first SELECT (cold)", "ms", "lower", "big_cold", "select_ms", 1),
            ("big_select_restart_ms", f"{args.big:,}-msg mailbox: SELECT after restart", "ms", "lower", "big", "first_select_ms", 1),
            ("big_select_ms", f"{args.big:,}-msg mailbox: SELECT", "ms", "lower", "big", "select_ms", 1),
            ("big_fetch_flags_ms", "  UID FETCH 1:* (FLAGS)", "ms", "lower", "big", "fetch_flags_ms", 1),
            ("big_search_unseen_ms", "  SEARCH UNSEEN", "ms", "lower", "big", "search_unseen_ms", 1),
        ]
    if args.idle:
        spec += [
            ("idle_rss_mb", f"{args.idle:,} idle sessions: RSS (sum, minus baseline)", "MB", "lower", "idle", "rss_delta", 1 / 2**20),
            ("idle_pss_mb", "  PSS (shared pages split)", "MB", "lower", "idle", "pss_delta", 1 / 2**20),
            ("idle_rss_kb_per_conn", "  RSS per session", "KB", "lower", "idle", "rss_per_conn", 1 / 1024),
            ("idle_pss_kb_per_conn", "  PSS per session", "KB", "lower", "idle", "pss_per_conn", 1 / 1024),
            ("idle_rss_total_mb", "  RSS total, all processes", "MB", "lower", "idle", "rss_total", 1 / 2**20),
            ("idle_login_s", "  time to log them all in", "s", "lower", "idle", "login_seconds", 1),
        ]
    out = []
    for key, label, unit, better, part, field, scale in spec:
        row = Row(key, label, unit, better)
        for name, d in details.items():
            if part == "big_cold":
                v = d.get("big_cold", {}).get(field)
                row.add(name, v * scale if v is not None else None, [v * scale] if v is not None else [])
            else:
                med, vals = _med(details, name, part, field)
                row.add(name, med * scale if med is not None else None, [v * scale for v in vals])
        out.append(row.as_dict())
    return out
