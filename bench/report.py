"""The results table (medians, ratio jdmail/peer) and the rows the JSON file carries."""


class Row:
    """One figure: ``values[server]`` is the median, ``rounds[server]`` every round."""

    def __init__(self, key, label, unit, better):
        self.key, self.label, self.unit, self.better = key, label, unit, better
        self.values, self.rounds = {}, {}

    def add(self, server, median, rounds):
        self.values[server] = median
        self.rounds[server] = rounds

    def as_dict(self):
        return {"key": self.key, "label": self.label, "unit": self.unit, "better": self.better,
                "values": self.values, "rounds": self.rounds}


def _fmt(v):
    if v is None:
        return "-"
    if abs(v) >= 1000:
        return f"{v:,.0f}"
    if abs(v) >= 100:
        return f"{v:.0f}"
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.2f}"


def ratio(a, b):
    if a is None or b is None or b == 0:
        return None
    return a / b


def add_ratios(result):
    """Each row gets ``ratio``: jdmail's median over the peer's (None when either is missing)."""
    order = result.get("order", [])
    peer = next((s for s in order if s != "jdmail"), None)
    result["peer"] = peer
    for row in result.get("rows", []):
        row["ratio"] = (ratio(row["values"].get("jdmail"), row["values"].get(peer))
                        if peer and "jdmail" in order and row.get("better") else None)


def table(result):
    """Plain-text table: workload, one column per server, jdmail/peer ratio."""
    order = result.get("order", [])
    labels = result.get("labels", {})
    status = result.get("servers", {})
    peer = next((s for s in order if s != "jdmail"), None)
    header = ["workload", "unit"] + [labels.get(s, s) for s in order]
    if "jdmail" in order and peer:
        header.append(result.get("ratio_label") or f"jdmail/{labels.get(peer, peer)}")
    lines = []
    for row in result.get("rows", []):
        cells = [row["label"], row["unit"]]
        for s in order:
            st = status.get(s, {}).get("status", "ok")
            cells.append(_fmt(row["values"].get(s)) if st == "ok" else "n/a")
        if "jdmail" in order and peer:
            r = ratio(row["values"].get("jdmail"), row["values"].get(peer)) if row.get("better") else None
            cells.append("-" if r is None else f"{r:.2f}x")
        lines.append(cells)
    if not lines:
        lines.append(["(no figures)", ""] + ["" for _ in order] + ([""] if "jdmail" in order and peer else []))
    widths = [max(len(str(c[i])) for c in [header] + lines) for i in range(len(header))]
    out = []
    title = result.get("title") or f"{result.get('benchmark', '').upper()} benchmark"
    p = result.get("params", {})
    if p and not result.get("title"):
        title += (f": {p.get('clients')} clients x {p.get('seconds'):g}s, {p.get('users')} users x "
                  f"{p.get('messages')} messages, big mailbox {p.get('big'):,}, {p.get('idle'):,} idle, "
                  f"{p.get('rounds')} round(s), medians")
    out.append(title)
    out.append("  ".join(h.ljust(w) if i < 2 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths))))
    out.append("  ".join("-" * w for w in widths))
    for cells in lines:
        out.append("  ".join(str(c).ljust(w) if i < 2 else str(c).rjust(w)
                             for i, (c, w) in enumerate(zip(cells, widths))))
    out.extend(per_command(result))
    out.extend(result.get("checks", []))
    for s in order:
        st = status.get(s, {})
        if st.get("status", "ok") != "ok":
            out.append(f"{labels.get(s, s)}: {st['status']}")
        elif st.get("version"):
            out.append(f"{labels.get(s, s)}: {st['version']}")
    for s, d in result.get("details", {}).items():
        for e in d.get("errors", []):
            out.append(f"{labels.get(s, s)} error: {e}")
    return "\n".join(out)


def per_command(result):
    """Mixed load, per command: p50/p99 latency (medians over rounds) for each server."""
    order = [s for s in result.get("order", []) if result.get("details", {}).get(s, {}).get("mixed")]
    if not order:
        return []
    labels = result.get("labels", {})
    ops = []
    for s in order:
        for m in result["details"][s]["mixed"]:
            for op in m.get("per_op", {}):
                if op not in ops:
                    ops.append(op)

    def med(s, op, key):
        vals = sorted(m["per_op"][op][key] for m in result["details"][s]["mixed"]
                      if op in m.get("per_op", {}) and m["per_op"][op][key] is not None)
        return vals[len(vals) // 2] if vals else None

    header = ["mixed load, per command"] + [f"{labels.get(s, s)} p50/p99 ms" for s in order]
    lines = [[op] + [f"{_fmt(med(s, op, 'p50_ms'))} / {_fmt(med(s, op, 'p99_ms'))}" for s in order] for op in ops]
    widths = [max(len(c[i]) for c in [header] + lines) for i in range(len(header))]
    out = ["", "  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(header, widths))),
           "  ".join("-" * w for w in widths)]
    for cells in lines:
        out.append("  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths))))
    out.append("")
    return out
