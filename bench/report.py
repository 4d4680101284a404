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
             "MiB/s of data moved; CPU = server CPU-seconds per GiB; RSS = peak server RSS (MiB, whole process tree)",
             "streamd's options: " + (", ".join(f"{k} = {v}" for k, v in meta.get("streamd_options", {}).items())
                                      or "its defaults"),
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
            ("md5, one core (CPU time)", ref["md5_cpu_mib_s"], 1024 / ref["md5_cpu_mib_s"]),
            ("sha512, one core (wall clock)", ref["sha512_mib_s"], None),
            ("sha512, one core (CPU time)", ref["sha512_cpu_mib_s"], 1024 / ref["sha512_cpu_mib_s"])]
    for mode, name in (("sendfile", "os.sendfile"), ("readwrite", "1 MiB read/write")):
        for clients in CLIENTS:
            r = ref[f"{mode}_{clients}"]
            rows.append((f"plain loopback copy to curl, {name}, {clients[1:]} client(s)", r["mib_s"], r["cpu_s_per_gib"]))
    lines.append(f"{'machine reference (hashes: hashing time only)':60}{'MiB/s':>10}{'CPU':>10}")
    lines += [f"  {label:58}{value:>10.0f}{_num(cpu, '.2f'):>10}" for label, value, cpu in rows]

    lines += ["", f"{'streamd targets (target in brackets)':60}" + "".join(f"{k:>10}" for k in kinds)]

    def row(label: str, values) -> None:
        lines.append(f"  {label:58}" + "".join(f"{v:>10}" for v in values))

    cores = meta["cores"]
    row("two-core ceiling, MiB/s (cores / hash+client CPU-s/GiB)",
        [_num(two_core_ceiling(ref, files[k], cores)) for k in kinds])
    row("upload 1 client / two-core ceiling [>= 0.80]",
        [_ratio(_get(files[k], "streamd", "c1", "upload", "mib_s"), two_core_ceiling(ref, files[k], cores))
         for k in kinds])
    row("upload 1 client, server CPU-s/GiB over the hashes [<= 0.5]",
        [_num(beyond_hashes(ref, files[k]), ".2f") for k in kinds])
    row("upload 4 clients / Glance's 4 clients [>= 1.30]",
        [_ratio(_get(files[k], "streamd", "c4", "upload", "mib_s"), _get(files[k], "glance", "c4", "upload", "mib_s"))
         for k in kinds])
    row("upload CPU-s/GiB, 4 clients / 1 client [<= 1.10]",
        [_ratio(_get(files[k], "streamd", "c4", "upload", "cpu_s_per_gib"),
                _get(files[k], "streamd", "c1", "upload", "cpu_s_per_gib")) for k in kinds])
    for clients in CLIENTS:
        for op in ("download_cold", "download_warm"):
            row(f"{op.replace('_', ' ')} {clients[1:]} client(s) / fastest plain copy [>= 0.80]",
                [_ratio(_get(files[k], "streamd", clients, op, "mib_s"), fastest_copy(ref, clients)) for k in kinds])

    problems = checks(summary, meta['cores'])
    lines += ["", "checks: " + ("all streamd targets met" if not problems else f"{len(problems)} problem(s) in streamd")]
    lines += [f"  - {p}" for p in problems]
    glance_errors = sorted({e for k in kinds for c in CLIENTS for op, _ in OPERATIONS
                            for e in _get(files[k], "glance", c, op, "errors", default=[])})
    if glance_errors:
        lines += ["glance errors seen:"] + [f"  - {e}" for e in glance_errors]
    return "\n".join(lines)


def hash_cpu_s_per_gib(reference: dict) -> float:
    """CPU-seconds per GiB of the two hashes every upload computes (md5 checksum, sha512 multihash), one core each."""
    return 1024 / reference["md5_cpu_mib_s"] + 1024 / reference["sha512_cpu_mib_s"]


def two_core_ceiling(reference: dict, data: dict, cores: int) -> float | None:
    """The fastest upload this machine can do: every core busy with nothing but the two hashes and the client.

    cores / (md5 + sha512 + client CPU-s/GiB), the client's figure measured on streamd's own 1-client upload.
    """
    client = _get(data, "streamd", "c1", "upload", "client_cpu_s_per_gib")
    if client is None:
        return None
    return cores * 1024 / (hash_cpu_s_per_gib(reference) + client)


def beyond_hashes(reference: dict, data: dict) -> float | None:
    cpu = _get(data, "streamd", "c1", "upload", "cpu_s_per_gib")
    return None if cpu is None else cpu - hash_cpu_s_per_gib(reference)


def target_ratios(results: dict) -> list[tuple[str, str, float | None]]:
    """(file, target, achieved / target with >= 1 meaning met) for the chart's last panel."""
    meta, ref, files = results["meta"], results["summary"]["reference"], results["summary"]["files"]
    out = []
    for kind, data in files.items():
        def mib(server: str, clients: str, op: str = "upload"):
            return _get(data, server, clients, op, "mib_s")
        ceiling = two_core_ceiling(ref, data, meta["cores"])
        one_cpu, four_cpu = (_get(data, "streamd", c, "upload", "cpu_s_per_gib") for c in CLIENTS)
        extra, glance_four = beyond_hashes(ref, data), mib("glance", "c4")
        out += [
            (kind, "upload 1 / ceiling >= 0.8", mib("streamd", "c1") / (0.8 * ceiling) if ceiling else None),
            (kind, "CPU beyond hashes <= 0.5", 0.5 / extra if extra and extra > 0 else None),
            (kind, "upload 4 / Glance 4 >= 1.3",
             mib("streamd", "c4") / (1.3 * glance_four) if glance_four and mib("streamd", "c4") else None),
            (kind, "CPU 4 / CPU 1 <= 1.1", 1.1 * one_cpu / four_cpu if one_cpu and four_cpu else None),
        ]
        for clients in CLIENTS:
            for op in ("download_cold", "download_warm"):
                got = mib("streamd", clients, op)
                out.append((kind, f"{op[9:]} {clients[1:]} / plain copy >= 0.8",
                            got / (0.8 * fastest_copy(ref, clients)) if got else None))
        rss = max((_get(data, "streamd", "c4", op, "peak_rss_mib", default=0) for op, _ in OPERATIONS), default=0)
        out.append((kind, f"RSS 4 clients <= {RSS_LIMIT_MIB}", RSS_LIMIT_MIB / rss if rss else None))
    return out


def checks(summary: dict, cores: int) -> list[str]:
    """streamd's targets (issue 18): 1-client upload >= 0.8x the two-core ceiling with <= 0.5 CPU-s/GiB beyond the
    hashes; 4 uploads >= 1.3x Glance's aggregate at <= 1.1x the 1-client CPU per GiB; downloads >= 0.8x the fastest
    plain copy; peak RSS <= 256 MiB with 4 clients; no failed request."""
    problems, ref = [], summary["reference"]
    for kind, data in summary["files"].items():
        ceiling = two_core_ceiling(ref, data, cores)
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
                if op != "upload" and r["mib_s"] < 0.8 * fastest_copy(ref, clients):
                    best = fastest_copy(ref, clients)
                    problems.append(f"{kind}, {label}, {n} client(s): {r['mib_s']:.0f} MiB/s is below 0.8x the "
                                    f"fastest plain copy ({best:.0f} MiB/s): {r['mib_s'] / best:.2f}x")
                if clients == "c4" and r["peak_rss_mib"] > RSS_LIMIT_MIB:
                    problems.append(f"{kind}, {label}, 4 clients: peak RSS {r['peak_rss_mib']:.0f} MiB "
                                    f"> {RSS_LIMIT_MIB} MiB")
        one, four = _get(data, "streamd", "c1", "upload"), _get(data, "streamd", "c4", "upload")
        glance_four = _get(data, "glance", "c4", "upload", "mib_s")
        if one and ceiling and one["mib_s"] < 0.8 * ceiling:
            problems.append(f"{kind}, upload, 1 client: {one['mib_s']:.0f} MiB/s is below 0.8x the two-core "
                            f"ceiling ({ceiling:.0f} MiB/s): {one['mib_s'] / ceiling:.2f}x")
        extra = beyond_hashes(ref, data)
        if extra is not None and extra > 0.5:
            problems.append(f"{kind}, upload, 1 client: {extra:.2f} CPU-s/GiB beyond the two hashes (> 0.5)")
        if four and glance_four and four["mib_s"] < 1.3 * glance_four:
            problems.append(f"{kind}, upload, 4 clients: {four['mib_s']:.0f} MiB/s is below 1.3x Glance's "
                            f"({glance_four:.0f} MiB/s): {four['mib_s'] / glance_four:.2f}x")
        if one and four and four["cpu_s_per_gib"] > 1.1 * one["cpu_s_per_gib"]:
            problems.append(f"{kind}, upload: {four['cpu_s_per_gib']:.2f} CPU-s/GiB with 4 clients is over 1.1x "
                            f"the 1-client {one['cpu_s_per_gib']:.2f}: {four['cpu_s_per_gib'] / one['cpu_s_per_gib']:.2f}x")
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
    fig, axes = plt.subplots(len(metrics) + 1, 1, figsize=(14, 16), constrained_layout=True)
    width = 0.8 / len(series)
    for ax, (metric, title) in zip(axes[:-1], metrics):
        for n, (server, kind) in enumerate(series):
            values = [_get(files[kind], server, clients, op, metric, default=0) for clients, op, _ in groups]
            xs = [g + (n - (len(series) - 1) / 2) * width for g in range(len(groups))]
            colour = colours[server][list(files).index(kind) % 2]
            ax.bar(xs, values, width, label=f"{server}, {kind}", color=colour)
        if metric == "mib_s":
            ceilings = [c for c in (two_core_ceiling(ref, files[k], meta["cores"]) for k in files) if c]
            if ceilings:
                ax.axhline(min(ceilings), color="black", linestyle="--", linewidth=1.2,
                           label=f"two-core upload ceiling ({min(ceilings):.0f})")
                ax.axhline(0.8 * min(ceilings), color="black", linestyle=":", linewidth=1,
                           label="0.8x the ceiling (upload target)")
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
    ax, ratios = axes[-1], target_ratios(results)
    names = list(dict.fromkeys(name for _, name, _ in ratios))
    for n, kind in enumerate(files):
        values = [next((v or 0 for k, t, v in ratios if k == kind and t == name), 0) for name in names]
        xs = [g + (n - (len(files) - 1) / 2) * (0.8 / len(files)) for g in range(len(names))]
        ax.bar(xs, values, 0.8 / len(files), label=f"streamd, {kind}", color=colours["streamd"][n % 2])
    ax.axhline(1.0, color="black", linewidth=1, label="target")
    ax.set_title("streamd's targets: achieved / target (1 or more = met)")
    ax.set_xticks(range(len(names)), [name.replace(" >=", "\n>=").replace(" <=", "\n<=") for name in names], fontsize="small")
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
