"""``bench/run WORKLOAD [options]``: argument parsing, setup and the report.

Only the ``imap`` workload exists so far (jdmail vs Dovecot); the harness is
meant to grow (smtp, pop3, queue, filters: issue 7), each workload adding
rows to the same table and JSON file.
"""

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

from bench import report

WORKLOADS = ("imap",)


def debian_missing(packages):
    out = []
    for p in packages:
        r = subprocess.run(["dpkg-query", "-W", "-f=${Status}", p], capture_output=True, text=True)
        if "ok installed" not in r.stdout:
            out.append(p)
    return out


def ensure_debian(packages):
    """Install ``packages`` with apt when root; otherwise return those still missing."""
    missing = debian_missing(packages)
    if missing and os.geteuid() == 0 and shutil.which("apt-get"):
        print(f"bench: installing Debian packages: {' '.join(missing)}", file=sys.stderr, flush=True)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], env=env, stdout=subprocess.DEVNULL)
        subprocess.run(["apt-get", "install", "-y", "-qq", *missing], env=env, stdout=subprocess.DEVNULL)
        missing = debian_missing(packages)
    return missing


def parse_args(argv):
    p = argparse.ArgumentParser(prog="bench/run", description="jdmail benchmarks against peer servers (see bench/README.md)")
    p.add_argument("workload", choices=WORKLOADS, help="what to measure")
    p.add_argument("--clients", type=int, default=10, help="concurrent clients in the mixed load (default 10)")
    p.add_argument("--users", type=int, default=None, help="users with generated mailboxes (default: --clients)")
    p.add_argument("--seconds", type=float, default=30, help="length of one mixed-load run (default 30)")
    p.add_argument("--messages", type=int, default=200, help="messages per user mailbox (default 200)")
    p.add_argument("--big", type=int, default=100000, help="messages in the big mailbox (default 100000; 0 skips)")
    p.add_argument("--idle", type=int, default=1000, help="idle logged-in connections for the memory figure (default 1000; 0 skips)")
    p.add_argument("--idle-per-user", type=int, default=5, help="idle connections per user (default 5)")
    p.add_argument("--no-idle-command", action="store_true", help="idle sessions do not send IDLE even when offered")
    p.add_argument("--rounds", type=int, default=3, help="rounds; each figure is the median (default 3)")
    p.add_argument("--servers", default="jdmail,dovecot", help="comma-separated: jdmail, dovecot (default both)")
    p.add_argument("--hash", default="SHA512-CRYPT", choices=("BLF-CRYPT", "SHA512-CRYPT", "PLAIN"),
                   help="password scheme stored for every user on both servers (default SHA512-CRYPT: a few ms; "
                        "BLF-CRYPT, jdmailctl's default, costs ~100 ms per login and makes 1,000 logins take minutes)")
    p.add_argument("--jdmail-set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="extra jdmail INI setting (repeatable)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--smoke", action="store_true",
                   help="tiny sizes, jdmail only, a few seconds (CI); exits 0 when jdmail serves no IMAP yet")
    p.add_argument("--tmpdir", default=None, help="where the run's temp dir goes (default $TMPDIR or /tmp)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs, mail) afterwards")
    p.add_argument("--seed", type=int, default=1, help="seed for the generated mail and the clients")
    args = p.parse_args(argv)
    if args.smoke:
        args.clients, args.seconds, args.messages, args.big = 2, 2.0, 20, 500
        args.idle, args.rounds, args.servers = 10, 1, "jdmail"
    args.users = args.users or args.clients
    args.servers = [s.strip().lower() for s in args.servers.split(",") if s.strip()]
    for s in args.servers:
        if s not in ("jdmail", "dovecot"):
            p.error(f"--servers: unknown server {s!r} (jdmail, dovecot)")
    settings = {}
    for item in args.jdmail_set:
        key, sep, value = item.partition("=")
        section, dot, name = key.partition(".")
        if not sep or not dot:
            p.error(f"--jdmail-set {item!r}: expected SECTION.KEY=VALUE")
        settings.setdefault(section.strip(), {})[name.strip()] = value.strip()
    args.jdmail_settings = settings
    for name in ("clients", "users", "messages", "rounds"):
        if getattr(args, name) < 1:
            p.error(f"--{name} must be at least 1")
    if args.seconds <= 0:
        p.error("--seconds must be positive")
    return args


def machine_info():
    info = {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
            "machine": platform.machine()}
    try:
        with open("/proc/meminfo") as f:
            info["memory_mb"] = int(f.readline().split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return info


def main(argv=None):
    args = parse_args(sys.argv[1:] if argv is None else argv)
    if args.workload == "imap":
        from bench import imap
        started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
        if "dovecot" in args.servers:
            missing = ensure_debian(["dovecot-imapd", "dovecot-pop3d"])
            if missing:
                print(f"bench: please install these Debian packages first (as root: apt-get install {' '.join(missing)})",
                      file=sys.stderr)
                return 2
        base = args.tmpdir or os.environ.get("TMPDIR") or "/tmp"
        tmp = tempfile.mkdtemp(prefix="jdmail-bench-", dir=base)
        os.chmod(tmp, 0o755)
        try:
            result = imap.run(args, tmp)
        finally:
            if args.keep:
                print(f"bench: kept {tmp}", file=sys.stderr)
            else:
                shutil.rmtree(tmp, ignore_errors=True)
        result["started"] = started
        report.add_ratios(result)
        result["machine"] = machine_info()
        print()
        print(report.table(result))
        if args.json:
            with open(args.json, "w") as f:
                json.dump(result, f, indent=2, sort_keys=False)
                f.write("\n")
            print(f"\nJSON: {args.json}")
        return result.get("exit", 0)
    return 2
