"""latest.md (a table with ratios) and latest.png (a chart of the ratios) from latest.json.

python benchmarks/report.py [benchmarks/results]     # re-render from an existing latest.json
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

CP = "conductor-python"


def advantage(fig: dict[str, Any], other: str) -> float | None:
    """How many times better ours is than `other` (> 1: ours is better)."""
    if "ours" not in fig or other not in fig:
        return None
    ours, theirs = fig["ours"]["median"], fig[other]["median"]
    if fig["better"] == "lower":
        return theirs / ours if ours > 0 else None
    return ours / theirs if theirs > 0 else None


def cell(fig: dict[str, Any], sdk: str) -> str:
    if sdk not in fig:
        return "–"
    v = fig[sdk]
    return f"{_num(v['median'])} ({_num(v['min'])}–{_num(v['max'])})"


def _num(x: float) -> str:
    if x == 0:
        return "0"
    if abs(x) >= 100:
        return f"{x:.0f}"
    if abs(x) >= 10:
        return f"{x:.1f}"
    if abs(x) >= 1:
        return f"{x:.2f}"
    return f"{x:.3g}"


def _ratio(r: float | None) -> str:
    return "–" if r is None else f"{r:.2f}×"


def write_markdown(summary: dict[str, Any], out: Path) -> None:
    meta = summary["meta"]
    lines = [
        "# conductor_worker vs conductor-python 2.0.0 vs raw urllib3",
        "",
        f"Run {meta['started']} ({'--quick' if meta['quick'] else 'full'}, {meta['reps']} "
        f"repetitions, {meta['duration_seconds']} s). Concurrency {meta['concurrency_per_type']} "
        f"per task type, poll interval {meta['poll_interval_seconds']} s, no-op worker, "
        f"{meta['cpu_count']} CPUs (server on {meta['server_cpus']}, clients on "
        f"{meta['client_cpus']}).",
        "",
        "**fake** = benchmarks/fake_server.py, a minimal loopback server that is NOT Conductor: "
        "its figures are the clients' own cost. **real** = a freshly started Conductor OSS "
        "server (scripts/conductor-server.sh).",
        "",
        "Cells: median (min–max). *vs cp* / *vs raw*: how many times better ours is "
        "(> 1× = ours better; lower-is-better figures use theirs/ours).",
        "",
        "| figure | unit | ours | conductor-python | raw | vs cp | vs raw |",
        "|---|---|---|---|---|---|---|",
    ]
    for key, fig in summary["figures"].items():
        arrow = "↓" if fig["better"] == "lower" else "↑"
        lines.append(
            f"| {key} | {fig['unit']} {arrow} | {cell(fig, 'ours')} | {cell(fig, CP)} | "
            f"{cell(fig, 'raw')} | {_ratio(advantage(fig, CP))} | "
            f"{_ratio(advantage(fig, 'raw'))} |"
        )
    if summary.get("incidents"):
        lines += ["", "Incidents during the run:", ""]
        lines += [f"- {text}" for text in summary["incidents"]]
    lines.append("")
    (out / "latest.md").write_text("\n".join(lines))


def write_chart(summary: dict[str, Any], out: Path) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("matplotlib not installed: no latest.png", file=sys.stderr)
        return
    keys = [k for k, f in summary["figures"].items() if advantage(f, CP) is not None]
    vs_cp = [advantage(summary["figures"][k], CP) or 0 for k in keys]
    vs_raw = [advantage(summary["figures"][k], "raw") for k in keys]
    fig, ax = plt.subplots(figsize=(10, 0.38 * len(keys) + 1.5))
    y = list(range(len(keys)))
    ax.barh(
        [i + 0.2 for i in y],
        vs_cp,
        height=0.4,
        label="ours vs conductor-python 2.0.0",
        color="#2b7bba",
    )
    ax.barh(
        [i - 0.2 for i in y],
        [r if r is not None else 0 for r in vs_raw],
        height=0.4,
        label="ours vs raw urllib3 floor",
        color="#999999",
    )
    ax.axvline(1.0, color="black", linewidth=0.8)
    ax.set_xscale("log")
    ax.set_yticks(y)
    ax.set_yticklabels(keys, fontsize=8)
    ax.invert_yaxis()
    ax.set_xlabel("times better than the other (log scale; > 1 = ours better)")
    ax.set_title("conductor_worker: advantage per figure (medians)")
    ax.legend(loc="lower right", fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "latest.png", dpi=110)


def write(summary: dict[str, Any], out: Path) -> None:
    write_markdown(summary, out)
    write_chart(summary, out)
    print(f"wrote {out / 'latest.md'} and {out / 'latest.png'}", file=sys.stderr)


if __name__ == "__main__":
    folder = Path(sys.argv[1] if len(sys.argv) > 1 else Path(__file__).parent / "results")
    write(json.loads((folder / "latest.json").read_text()), folder)
