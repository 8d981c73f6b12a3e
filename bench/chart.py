"""``--png FILE``: the table's figures as bar charts, one small chart per row (the
median of each server, with every round as a dot), grouped by workload."""

COLORS = {"jdmail": "#1f77b4", "dovecot": "#ff7f0e", "postfix": "#2ca02c", "smtp-sink": "#7f7f7f"}


def draw(results, path, columns=4):
    """Write a PNG of every row that has a better direction, for every result."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    panels = []
    for res in results:
        labels = res.get("labels", {})
        order = [s for s in res.get("order", []) if res.get("servers", {}).get(s, {}).get("status", "ok") == "ok"]
        for row in res.get("rows", []):
            if not row.get("better") or not any(row["values"].get(s) is not None for s in order):
                continue
            panels.append((res.get("benchmark", ""), row, order, labels))
    if not panels:
        panels = [("", None, [], {})]
    nrows = (len(panels) + columns - 1) // columns
    fig, axes = plt.subplots(nrows, columns, figsize=(4.2 * columns, 2.6 * nrows), squeeze=False)
    for ax in axes.flat[len(panels):]:
        ax.axis("off")
    for ax, (bench, row, order, labels) in zip(axes.flat, panels):
        if row is None:
            ax.text(0.5, 0.5, "no figures", ha="center", va="center")
            ax.axis("off")
            continue
        names = [labels.get(s, s) for s in order]
        vals = [row["values"].get(s) or 0 for s in order]
        ys = range(len(order))
        ax.barh(list(ys), vals, color=[COLORS.get(s, "#9467bd") for s in order])
        for y, s in zip(ys, order):
            dots = row.get("rounds", {}).get(s) or []
            ax.plot(dots, [y] * len(dots), "k.", markersize=3)
        ax.set_yticks(list(ys))
        ax.set_yticklabels(names, fontsize=8)
        ax.invert_yaxis()
        ratio = row.get("ratio")
        title = f"{bench}: {row['label'].strip()}"
        if len(title) > 48:
            title = title[:47] + "…"
        ax.set_title(title, fontsize=8)
        ax.set_xlabel(f"{row['unit']} ({row['better']} is better)"
                      + (f", jdmail/peer {ratio:.2f}x" if ratio is not None else ""), fontsize=7)
        ax.tick_params(axis="x", labelsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def main(argv=None):
    """``python -m bench.chart OUT.png RESULT.json...``: one chart of several runs' JSON
    files (each a workload's result, or ``bench/run all``'s)."""
    import json
    import sys
    args = sys.argv[1:] if argv is None else argv
    if len(args) < 2:
        print("usage: python -m bench.chart OUT.png RESULT.json...", file=sys.stderr)
        return 2
    results = []
    for path in args[1:]:
        with open(path) as f:
            doc = json.load(f)
        results.extend(doc["workloads"] if "workloads" in doc else [doc])
    draw(results, args[0])
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
