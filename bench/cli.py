"""``bench/run WORKLOAD [options]``: argument parsing, setup and the report.

Each workload is a module with ``add_options(parser)``, ``smoke(args)`` (the
tiny jdmail-only sizes), ``SERVERS`` (which ``--servers`` it knows),
``packages(args)`` (the Debian packages it needs) and ``run(args, tmpdir)`` ->
a result (rows of medians, details, exit status). ``bench/run all`` runs every
workload with its defaults, one after the other.
"""

import argparse
import importlib
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time

from bench import report

WORKLOADS = ("smtp", "pop3", "imap", "connections", "queue", "filters")


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


def module(name):
    return importlib.import_module(f"bench.{name}")


def common_options(p):
    p.add_argument("--rounds", type=int, default=3, help="rounds; each figure is the median (default 3)")
    p.add_argument("--jdmail-set", action="append", default=[], metavar="SECTION.KEY=VALUE",
                   help="extra jdmail INI setting (repeatable)")
    p.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    p.add_argument("--png", metavar="FILE", help="also draw the figures as a PNG chart (matplotlib)")
    p.add_argument("--smoke", action="store_true", help="tiny sizes, jdmail only, a few seconds (CI)")
    p.add_argument("--tmpdir", default=None, help="where the run's temp dir goes (default $TMPDIR or /tmp)")
    p.add_argument("--keep", action="store_true", help="keep the temp dir (configs, logs, mail) afterwards")
    p.add_argument("--seed", type=int, default=1, help="seed for generated mail and clients")


def build_parser():
    p = argparse.ArgumentParser(prog="bench/run", description="jdmail benchmarks against peer servers "
                                                              "(see bench/README.md)")
    sub = p.add_subparsers(dest="workload", required=True, metavar="WORKLOAD")
    parsers = {}
    for name in WORKLOADS:
        mod = module(name)
        sp = sub.add_parser(name, help=(mod.__doc__ or "").strip().split("\n")[0])
        mod.add_options(sp)
        common_options(sp)
        parsers[name] = sp
    sp = sub.add_parser("all", help="every workload with its default sizes, one after the other")
    common_options(sp)
    parsers["all"] = sp
    return p, parsers


def finish_args(args, name, error):
    """Smoke sizes, --servers and --jdmail-set parsed, the workload's own checks."""
    mod = module(name)
    if args.smoke:
        mod.smoke(args)
    if isinstance(args.servers, str):
        args.servers = [s.strip().lower() for s in args.servers.split(",") if s.strip()]
    for s in args.servers:
        if s not in mod.SERVERS:
            error(f"--servers: unknown server {s!r} ({', '.join(mod.SERVERS)})")
    settings = {}
    for item in args.jdmail_set:
        key, sep, value = item.partition("=")
        section, dot, key_name = key.partition(".")
        if not sep or not dot:
            error(f"--jdmail-set {item!r}: expected SECTION.KEY=VALUE")
        settings.setdefault(section.strip(), {})[key_name.strip()] = value.strip()
    args.jdmail_settings = settings
    if args.rounds < 1:
        error("--rounds must be at least 1")
    if hasattr(mod, "check_args"):
        mod.check_args(args, error)
    return args


def parse_args(argv):
    """The parsed arguments of one workload (for ``all``: a list, one per workload)."""
    p, parsers = build_parser()
    args = p.parse_args(argv)
    if args.workload != "all":
        return finish_args(args, args.workload, parsers[args.workload].error)
    out = []
    common = {k: v for k, v in vars(args).items() if k != "workload"}
    for name in WORKLOADS:
        a = parsers[name].parse_args([])
        for k, v in common.items():
            setattr(a, k, v)
        a.workload = name
        out.append(finish_args(a, name, parsers[name].error))
    return out


def machine_info():
    info = {"cpus": os.cpu_count(), "kernel": platform.release(), "python": platform.python_version(),
            "machine": platform.machine()}
    try:
        with open("/proc/meminfo") as f:
            info["memory_mb"] = int(f.readline().split()[1]) // 1024
    except (OSError, ValueError, IndexError):
        pass
    return info


def run_one(args):
    mod = module(args.workload)
    started = time.strftime("%Y-%m-%dT%H:%M:%S%z")
    missing = ensure_debian(mod.packages(args))
    if missing:
        print(f"bench: please install these Debian packages first (as root: apt-get install {' '.join(missing)})",
              file=sys.stderr)
        return {"benchmark": args.workload, "exit": 2, "rows": [], "missing": missing}
    base = args.tmpdir or os.environ.get("TMPDIR") or "/tmp"
    tmp = tempfile.mkdtemp(prefix=f"jdmail-bench-{args.workload}-", dir=base)
    os.chmod(tmp, 0o755)
    try:
        result = mod.run(args, tmp)
    finally:
        if args.keep:
            print(f"bench: kept {tmp}", file=sys.stderr)
        else:
            shutil.rmtree(tmp, ignore_errors=True)
    result["started"] = started
    report.add_ratios(result)
    result["machine"] = machine_info()
    print()
    print(report.table(result), flush=True)
    return result


def main(argv=None):
    parsed = parse_args(sys.argv[1:] if argv is None else argv)
    runs = parsed if isinstance(parsed, list) else [parsed]
    results = [run_one(a) for a in runs]
    first = runs[0]
    doc = results[0] if len(results) == 1 else {"benchmark": "all", "workloads": results,
                                                  "machine": machine_info()}
    if first.json:
        with open(first.json, "w") as f:
            json.dump(doc, f, indent=2, sort_keys=False)
            f.write("\n")
        print(f"\nJSON: {first.json}")
    if first.png:
        from bench import chart
        try:
            chart.draw(results, first.png)
            print(f"PNG: {first.png}")
        except ImportError as e:
            print(f"bench: no PNG: {e} (pip install matplotlib, or bench/run makes .venv with it)", file=sys.stderr)
            return 2
    codes = [r.get("exit", 0) for r in results]
    return 2 if 2 in codes else max(codes)
