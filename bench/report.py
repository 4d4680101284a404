"""The printed table, the automatic checks of streamd's targets, and the PNG chart of results.json."""

from __future__ import annotations

from pathlib import Path

OPERATIONS = [("upload", "upload"), ("download_cold", "download cold"), ("download_warm", "download warm")]
CLIENTS = ("c1", "c4")
RSS_LIMIT_MIB = 256


def _get(tree: dict, *keys: str, default=None):
    for key in keys:
        if not isinstance(tree, dict) or key not in tree:
            return default
        tree = tree[key]
    return tree


def _ratio(a, b) -> str:
    return f"{a / b:.2f}x" if a and b else "-"


def _num(x, fmt: str = ".0f") -> str:
    return "-" if x is None else format(x, fmt)


def fastest_copy(reference: dict, clients: str) -> float:
    return max(reference[f"{mode}_{clients}"]["mib_s"] for mode in ("sendfile", "readwrite"))


def table(results: dict) -> str:
    meta, summary = results["meta"], results["summary"]
    files = summary["files"]
    lines = [f"streamd vs Glance 33.0.0 on {meta['cores']} cores ({meta['cpu']}): {meta['file_mib']} MiB files, "
             f"median of {meta['repetitions']}; failures are totals over all repetitions",
             f"load average {meta['loadavg_start'][0]:.1f} at the start, {meta['loadavg_end'][0]:.1f} at the end; "
             f"other processes kept {meta['other_load_cores']} of the {meta['cores']} cores busy on average",
             f"MiB/s of data moved; CPU = server CPU-seconds per GiB; RSS = peak server RSS (MiB, whole process tree)",
             ""]
    head = (f"{'file':9}{'clients':>7}  {'operation':14}| {'MiB/s streamd':>13} {'glance':>7} {'s/g':>6} "
            f"| {'CPU streamd':>11} {'glance':>6} | {'RSS streamd':>11} {'glance':>6} | {'failed streamd':>14} {'glance':>6}")
    lines += [head, "-" * len(head)]
    for kind, data in files.items():
        for clients in CLIENTS:
            for op, label in OPERATIONS:
                s, g = _get(data, "streamd", clients, op, default={}), _get(data, "glance", clients, op, default={})
                fails = [f"{r['failed']}/{r['attempted']}" if r else "-" for r in (s, g)]
                lines.append(
                    f"{kind:9}{clients[1:]:>7}  {label:14}| {_num(s.get('mib_s')):>13} {_num(g.get('mib_s')):>7} "
                    f"{_ratio(s.get('mib_s'), g.get('mib_s')):>6} "
                    f"| {_num(s.get('cpu_s_per_gib'), '.2f'):>11} {_num(g.get('cpu_s_per_gib'), '.2f'):>6} "
                    f"| {_num(s.get('peak_rss_mib')):>11} {_num(g.get('peak_rss_mib')):>6} "
                    f"| {fails[0]:>14} {fails[1]:>6}")
        lines.append("")

    kinds, ref = list(files), summary["reference"]
    rows = [("md5, one core (wall clock)", ref["md5_mib_s"], None),
            ("md5, one core (CPU time)", ref["md5_cpu_mib_s"], None),
            ("sha512, one core (wall clock)", ref["sha512_mib_s"], None),
            ("sha512, one core (CPU time)", ref["sha512_cpu_mib_s"], None)]
    for mode, name in (("sendfile", "os.sendfile"), ("readwrite", "1 MiB read/write")):
        for clients in CLIENTS:
            r = ref[f"{mode}_{clients}"]
            rows.append((f"plain loopback copy to curl, {name}, {clients[1:]} client(s)", r["mib_s"], r["cpu_s_per_gib"]))
    lines.append(f"{'machine reference (hashes: hashing time only)':60}{'MiB/s':>10}{'CPU':>10}")
    lines += [f"  {label:58}{value:>10.0f}{_num(cpu, '.2f'):>10}" for label, value, cpu in rows]

    lines += ["", f"{'streamd targets':60}" + "".join(f"{k:>10}" for k in kinds)]
    for clients in CLIENTS:
        label = f"upload {clients[1:]} client(s) / md5 one core (wall clock)"
        lines.append(f"  {label:58}" + "".join(
            f"{_ratio(_get(files[k], 'streamd', clients, 'upload', 'mib_s'), ref['md5_mib_s']):>10}" for k in kinds))
    for clients in CLIENTS:
        for op in ("download_cold", "download_warm"):
            label = f"{op.replace('_', ' ')} {clients[1:]} client(s) / fastest plain copy"
            lines.append(f"  {label:58}" + "".join(
                f"{_ratio(_get(files[k], 'streamd', clients, op, 'mib_s'), fastest_copy(ref, clients)):>10}"
                for k in kinds))

    problems = checks(summary)
    lines += ["", "checks: " + ("all streamd targets met" if not problems else f"{len(problems)} problem(s) in streamd")]
    lines += [f"  - {p}" for p in problems]
    glance_errors = sorted({e for k in kinds for c in CLIENTS for op, _ in OPERATIONS
                            for e in _get(files[k], "glance", c, op, "errors", default=[])})
    if glance_errors:
        lines += ["glance errors seen:"] + [f"  - {e}" for e in glance_errors]
    return "\n".join(lines)


def checks(summary: dict) -> list[str]:
    """streamd's targets: upload at least md5 single-core speed, download at least 0.8x the
    fastest plain copy, peak RSS at most 256 MiB with 4 clients, no failed request."""
    problems, ref = [], summary["reference"]
    for kind, data in summary["files"].items():
        for clients in CLIENTS:
            n = clients[1:]
            for op, label in OPERATIONS:
                r = _get(data, "streamd", clients, op)
                if r is None:
                    problems.append(f"{kind}, {n} client(s): no {label} result")
                    continue
                if r["failed"]:
                    problems.append(f"{kind}, {label}, {n} client(s): {r['failed']} of {r['attempted']} failed: "
                                    + "; ".join(r["errors"][:3]))
                if op == "upload" and r["mib_s"] < ref["md5_mib_s"]:
                    problems.append(f"{kind}, upload, {n} client(s): {r['mib_s']:.0f} MiB/s is below md5 on one "
                                    f"core ({ref['md5_mib_s']:.0f} MiB/s): {r['mib_s'] / ref['md5_mib_s']:.2f}x")
                if op != "upload" and r["mib_s"] < 0.8 * fastest_copy(ref, clients):
                    best = fastest_copy(ref, clients)
                    problems.append(f"{kind}, {label}, {n} client(s): {r['mib_s']:.0f} MiB/s is below 0.8x the "
                                    f"fastest plain copy ({best:.0f} MiB/s): {r['mib_s'] / best:.2f}x")
                if clients == "c4" and r["peak_rss_mib"] > RSS_LIMIT_MIB:
                    problems.append(f"{kind}, {label}, 4 clients: peak RSS {r['peak_rss_mib']:.0f} MiB "
                                    f"> {RSS_LIMIT_MIB} MiB")
    return problems


def chart(results: dict, path: Path) -> Path | None:
    try:
        import matplotlib
    except ImportError:
        print("matplotlib is missing: no chart (pip install matplotlib)")
        return None
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    meta, ref, files = results["meta"], results["summary"]["reference"], results["summary"]["files"]
    groups = [(clients, op, f"{label}\n{clients[1:]} client(s)") for clients in CLIENTS for op, label in OPERATIONS]
    series = [(server, kind) for server in ("streamd", "glance") for kind in files]
    colours = {"streamd": ["#1f77b4", "#6baed6"], "glance": ["#d62728", "#fc9272"]}
    metrics = [("mib_s", "MiB/s (higher is better)"), ("cpu_s_per_gib", "server CPU-s per GiB (lower is better)"),
               ("peak_rss_mib", "peak server RSS, MiB (lower is better)")]
    fig, axes = plt.subplots(len(metrics), 1, figsize=(14, 12), constrained_layout=True)
    width = 0.8 / len(series)
    for ax, (metric, title) in zip(axes, metrics):
        for n, (server, kind) in enumerate(series):
            values = [_get(files[kind], server, clients, op, metric, default=0) for clients, op, _ in groups]
            xs = [g + (n - (len(series) - 1) / 2) * width for g in range(len(groups))]
            colour = colours[server][list(files).index(kind) % 2]
            ax.bar(xs, values, width, label=f"{server}, {kind}", color=colour)
        if metric == "mib_s":
            for value, label, style in ((ref["md5_mib_s"], "md5 one core", "--"),
                                        (ref["sha512_mib_s"], "sha512 one core", ":"),
                                        (fastest_copy(ref, "c1"), "fastest plain copy, 1 client", "-."),
                                        (fastest_copy(ref, "c4"), "fastest plain copy, 4 clients", (0, (8, 3)))):
                ax.axhline(value, color="grey", linestyle=style, linewidth=1, label=label)
        if metric == "peak_rss_mib":
            ax.axhline(RSS_LIMIT_MIB, color="grey", linestyle="--", linewidth=1, label=f"{RSS_LIMIT_MIB} MiB")
        ax.set_title(title)
        ax.set_xticks(range(len(groups)), [g[2] for g in groups])
        ax.legend(fontsize="small", loc="upper left", bbox_to_anchor=(1.01, 1))
    fig.suptitle(f"streamd vs Glance 33.0.0, {meta['file_mib']} MiB files, median of {meta['repetitions']} "
                 f"({meta['date']})")
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return path


if __name__ == "__main__":  # re-render a finished run: python bench/report.py bench/out/results.json
    import json
    import sys

    source = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "out/results.json")
    loaded = json.loads(source.read_text())
    print(table(loaded))
    print(chart(loaded, source.with_suffix(".png")) or "")
