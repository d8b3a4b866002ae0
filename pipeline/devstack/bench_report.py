"""The bench's report: the issues' targets, each with its measured figure and whether it is met; the
latency-by-load plot; the report as tables."""

from __future__ import annotations

from pipeline.devstack.bench_load import latency_plot_svg


def check_targets(report: dict) -> list[dict]:
    """The issues' targets, each with the measured figure and whether it is met."""
    out = []
    model = report.get("model_only")
    if model:
        served = [r for r in model["rows"] if r["engine"] == "chatmod runtime, onnx_int8" and r["ratio"]]
        for row in served:
            out.append({"target": f"model-only {row['model']}: >= 8x the transformers pipeline default",
                        "measured": round(row["ratio"], 2), "met": row["ratio"] >= 8.0})
    e2e = report.get("end_to_end")
    if not e2e:
        return out
    runs = {r["workload"]: r for r in e2e["runs"]}
    unique = runs.get("unique")
    if unique:
        out.append({"target": "end-to-end unique: >= 1,000 msgs/s sustained",
                    "measured": round(unique["sustained_msgs_per_s"]), "met": unique["sustained_msgs_per_s"] >= 1000})
    capacity = e2e.get("capacity")
    if capacity:
        out.append({"target": f"capacity at p99 <= {capacity['bound_ms']:.0f} ms: >= 600 msgs/s",
                    "measured": capacity["capacity_msgs_per_s"], "met": capacity["capacity_msgs_per_s"] >= 600})
    raid = next((r for name, r in runs.items() if name.startswith("raid:")), None)
    reference = runs.get("reference: Faust, no model")
    if raid and reference:
        share = raid["sustained_msgs_per_s"] / reference["sustained_msgs_per_s"]
        out.append({"target": "raid: >= 90% of the stack's own limit (Faust, no model)", "measured": round(share, 3),
                    "met": share >= 0.9})
    if raid and "worker" in raid["extra"].get("cpu_ms_per_msg", {}):
        cpu = raid["extra"]["cpu_ms_per_msg"]["worker"]
        out.append({"target": "raid: worker CPU per cached message <= 0.2 ms", "measured": cpu, "met": cpu <= 0.2})
    peer = runs.get("peer: kafka-python + pipeline")
    if unique and peer:
        out.append({"target": "end-to-end unique over the peer design (reported)",
                    "measured": round(unique["sustained_msgs_per_s"] / peer["sustained_msgs_per_s"], 1), "met": True})
    peak = e2e.get("worker_memory", {}).get("peak_rss_mb")
    if peak is not None:
        out.append({"target": "worker peak RSS <= 600 MB", "measured": round(peak), "met": peak <= 600})
    for name, with_policy in runs.items():  # the term list's own cost is the target; with state, reported
        if unique and name.startswith("unique, profile:"):
            ratio = with_policy["sustained_msgs_per_s"] / unique["sustained_msgs_per_s"]
            wanted = 0.95 if not name.endswith("+ strikes") else None
            out.append({"target": f"{name.removeprefix('unique, ')}: "
                                  + (">= 95% of the unique throughput without" if wanted else
                                     "share of the unique throughput without (reported)"),
                        "measured": round(ratio, 3), "met": ratio >= wanted if wanted else True})
    out += _console_targets(runs)
    spans_off = runs.get("unique, models_explain=off")
    if unique and spans_off:
        ratio = unique["sustained_msgs_per_s"] / spans_off["sustained_msgs_per_s"]
        out.append({"target": "explanations on: >= 90% of the unique throughput with them off",
                    "measured": round(ratio, 3), "met": ratio >= 0.9})
    lost = sum(r["lost"] for r in e2e["runs"]) + sum(p["lost"] for p in (capacity or {}).get("points", []))
    out.append({"target": "nothing lost", "measured": lost, "met": lost == 0})
    return out


def _console_targets(runs: dict[str, dict]) -> list[dict]:
    """The console's cost at a fixed load: the worker's throughput and CPU per message beside the same run
    without it."""
    watched = next((r for name, r in runs.items() if ", console + " in name), None)
    plain = runs.get(watched["workload"].split(", console + ")[0]) if watched else None
    if not (plain and watched):
        return []
    ratio = watched["sustained_msgs_per_s"] / plain["sustained_msgs_per_s"]
    out = [{"target": f"{watched['workload']}: the worker keeps >= 95% of its throughput",
            "measured": round(ratio, 3), "met": ratio >= 0.95}]
    cpu = [r["extra"].get("cpu_ms_per_msg", {}).get("worker") for r in (plain, watched)]
    if None not in cpu:
        out.append({"target": f"{watched['workload']}: worker CPU per message <= 1.05x without the console",
                    "measured": round(cpu[1] / cpu[0], 3), "met": cpu[1] <= 1.05 * cpu[0]})
    return out


def latency_plot(report: dict) -> str | None:
    """The capacity search as an SVG (p50 and p99 by offered load), or None if it did not run."""
    capacity = report.get("end_to_end", {}).get("capacity")
    if not capacity or not capacity["points"]:
        return None
    info = report.get("machine", {})
    title = (f"chatmod end to end, unique texts: latency by offered load "
             f"({info.get('cpus', '?')} CPUs, {info.get('cpu', '?')})")
    return latency_plot_svg(capacity["points"], capacity["capacity_msgs_per_s"], capacity["bound_ms"], title)


def render(report: dict, console) -> None:  # console: rich.console.Console
    """The report as tables: model-only rows with ratios, end-to-end runs, capacity, CPU, targets."""
    from rich.table import Table

    model = report.get("model_only")
    if model:
        table = Table(title=f"model-only: {model['texts']} chat texts, batches of {model['batch_size']}, "
                            f"{model['threads']} threads")
        for col in ("model", "engine", "msgs/s", "batch p50 ms", "batch p99 ms", "x pipeline"):
            table.add_column(col, justify="left" if col in ("model", "engine") else "right")
        for r in model["rows"]:
            table.add_row(r["model"], r["engine"], f"{r['msgs_per_s']:,.0f}", f"{r['batch_p50_ms']:.1f}",
                          f"{r['batch_p99_ms']:.1f}", f"{r['ratio']:.1f}x" if r["ratio"] else "-")
        console.print(table)
    e2e = report.get("end_to_end")
    if e2e:
        _render_e2e(e2e, report.get("machine", {}).get("cpus"), console)
    for t in report.get("targets", []):
        mark = "[green]met[/]" if t["met"] else "[red]NOT met[/]"
        console.print(f"{mark}  {t['target']}: {t['measured']}")
    machine_info = report.get("machine", {})
    console.print(f"[dim]{machine_info.get('cpu', '?')}, {machine_info.get('cpus')} CPUs[/]")


def _render_e2e(e2e: dict, cpus: int | None, console) -> None:
    from rich.table import Table

    capacity = e2e.get("capacity") or {"points": []}
    table = Table(title=f"end-to-end: tansu + Redis + 1 worker ({e2e['threads']} model threads), "
                        f"{e2e['partitions']} partitions")
    for col in ("workload", "messages", "offered/s", "sustained msgs/s", "p50 ms", "p99 ms", "in worker p50/p99",
                "cache hits", "lost"):
        table.add_column(col, justify="left" if col == "workload" else "right")
    for r in [*e2e["runs"], *capacity["points"]]:
        offered = f"{r['offered_msgs_per_s']:,.0f}" if r["offered_msgs_per_s"] else "flat out"
        extra = r.get("extra", {})
        in_worker = f"{extra.get('worker_latency_p50_ms', float('nan')):.0f}/{extra.get('worker_latency_p99_ms', float('nan')):.0f}"
        table.add_row(r["workload"], f"{r['messages']:,}", offered, f"{r['sustained_msgs_per_s']:,.0f}",
                      f"{r['latency_p50_ms']:.0f}", f"{r['latency_p99_ms']:.0f}", in_worker,
                      f"{r['cache_hit_rate']:.0%}", str(r["lost"]))
    console.print(table)
    if capacity["points"]:
        console.print(f"capacity at p99 <= {capacity['bound_ms']:.0f} ms: "
                      f"[bold]{capacity['capacity_msgs_per_s']:,.0f} msgs/s[/] of unique texts "
                      f"({len(capacity['points'])} loads of {capacity['seconds_per_point']:.0f} s)")
    cpu = Table(title=f"machine time per message, ms of CPU (where the {cpus or '?'} CPUs went)")
    rows = [*e2e["runs"], *capacity["points"]]
    labels = sorted({k for r in rows for k in r.get("extra", {}).get("cpu_ms_per_msg", {})})
    for col in ("workload", *labels, "total"):
        cpu.add_column(col, justify="left" if col == "workload" else "right")
    for r in rows:
        used = r.get("extra", {}).get("cpu_ms_per_msg", {})
        if used:
            cpu.add_row(r["workload"], *(f"{used.get(k, float('nan')):.3f}" for k in labels), f"{sum(used.values()):.3f}")
    if labels:
        console.print(cpu)
    generator = next((r["extra"].get("load_generator") for r in rows if r.get("extra", {}).get("load_generator")), None)
    if generator:
        console.print(f"load generator: {generator}")
    memory = e2e.get("worker_memory")
    if memory:
        console.print(f"worker memory: {memory.get('rss_mb', 0):.0f} MB resident, "
                      f"{memory.get('peak_rss_mb', 0):.0f} MB peak")
