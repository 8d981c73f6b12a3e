"""What every workload but imap shares: starting the servers (a status per server),
rounds that alternate the order of the servers, and the table rows (medians of
the rounds) built from each round's figures."""

import os

from bench import servers
from bench.measure import median, say
from bench.report import Row


def start_all(targets, nofile, status, running):
    """Start each target; record its status; append the started ones to ``running``."""
    for t in targets:
        try:
            t.start(nofile)
            running.append(t)
            status[t.name] = {"status": "ok", "version": t.version}
            say(f"{t.label} listening on 127.0.0.1:{t.port}")
        except servers.ServerError as e:
            t.stop()
            status[t.name] = {"status": f"failed to start: {str(e).splitlines()[0]}", "version": t.version,
                              "log": str(e)[-3000:]}
            say(f"{t.label} failed to start: {e}")


def round_order(running, rnd):
    """Round ``rnd``'s order: as given in even rounds, reversed in odd ones."""
    return list(running) if rnd % 2 == 0 else list(reversed(running))


def run_rounds(running, rounds, measure, describe, after_failure=None):
    """Run ``measure(target)`` for every running target in every round, alternating
    the order; print ``describe(figures)`` after each run. A run whose figures carry
    ``errors`` (or that raised) is recorded as an error, not as a round. Returns
    ``{server: {"runs": [...], "errors": [...]}}``."""
    details = {t.name: {"runs": [], "errors": []} for t in running}
    for rnd in range(rounds):
        for t in round_order(running, rnd):
            tag = f"round {rnd + 1}/{rounds} {t.label}"
            try:
                f = measure(t)
            except Exception as e:   # noqa: BLE001
                if after_failure is not None:
                    after_failure()
                details[t.name]["errors"].append(f"round {rnd + 1}: {e!r}")
                say(f"{tag}: failed: {e!r}")
                continue
            say(f"{tag}: {describe(f)}, server CPU {f['server_cpu_s']:.1f}s, peak RSS "
                f"{f['peak_rss'] / 2**20:.0f} MB, other programs {100 * (f['other_cpu_share'] or 0):.0f}%")
            if f["errors"]:
                details[t.name]["errors"].extend(f"round {rnd + 1}: {e}" for e in f["errors"][:5])
                say(f"{tag}: {len(f['errors'])} problem(s), e.g. {f['errors'][0]}")
            else:
                details[t.name]["runs"].append(f)
    return details


def exit_code(details, running, targets):
    """1 when a server failed to start or a round had errors, else 0."""
    return 1 if (any(d["errors"] for d in details.values()) or len(running) < len(targets)) else 0


def result_skeleton(benchmark, title, params, targets, status):
    return {"benchmark": benchmark, "title": title, "params": params, "servers": status,
            "order": [t.name for t in targets], "labels": {t.name: t.label for t in targets}}


def make_rows(details, spec, part="runs"):
    """``spec``: [(key, label, unit, better, field, scale)] -> row dicts with the
    median over each server's ``details[server][part]`` rounds."""
    out = []
    for key, label, unit, better, field, scale in spec:
        row = Row(key, label, unit, better)
        for name, d in details.items():
            vals = [r[field] * scale for r in d.get(part, []) if r.get(field) is not None]
            row.add(name, median(vals), vals)
        out.append(row.as_dict())
    return out


def common_spec(prefix, unit_label="messages"):
    """The rows every throughput workload shows after its rate row."""
    per = "1,000 " + unit_label
    return [
        (f"{prefix}_p50_ms", "  latency p50", "ms", "lower", "p50_ms", 1),
        (f"{prefix}_p99_ms", "  latency p99", "ms", "lower", "p99_ms", 1),
        (f"{prefix}_cpu_per_1000", f"  server CPU per {per}", "s", "lower", "cpu_per_1000", 1),
        (f"{prefix}_peak_rss_mb", "  peak RSS, all server processes (sum)", "MB", "lower", "peak_rss", 1 / 2**20),
        (f"{prefix}_peak_pss_mb", "  PSS then (shared pages split)", "MB", "lower", "peak_pss", 1 / 2**20),
        (f"{prefix}_generator_cpu", "  load generator CPU", "% core", None, "generator_share", 100),
        (f"{prefix}_other_cpu", "  other programs' CPU meanwhile", "% core", None, "other_cpu_share", 100),
    ]


def count_files(maildir):
    """Messages in a Maildir's new/ and cur/ (0 when it does not exist yet)."""
    n = 0
    for sub in ("new", "cur"):
        try:
            n += sum(1 for e in os.scandir(os.path.join(maildir, sub)) if e.is_file())
        except FileNotFoundError:
            pass
    return n
