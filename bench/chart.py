"""The PNG chart of a benchmark summary: throughput, where the time goes, the batch curve, and memory."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")  # files only, no display
import matplotlib.pyplot as plt

from bench.harness import STAGES

_LABELS = {
    "a": "(a) bare\nloop",
    "b": "(b) pipeline\n1 worker",
    "c": "(c) dedup hits\nburst",  # reports before the PNG / small-JPEG split
    "c_closed": "(c) dedup hits\nclosed loop",
    "c_png": "(c) hits\nPNG burst",
    "c_png_closed": "(c) hits\nPNG closed",
    "c_small": "(c) hits\nJPEG burst",
    "c_small_closed": "(c) hits\nJPEG closed",
    "d": "(d) pipeline\n2 workers",
}
#: Bars of the throughput and latency panels, in order (old and new names of (c)).
_PIPELINE = ("a", "b", "c", "c_closed", "c_png", "c_png_closed", "c_small", "c_small_closed", "d")
_COLOURS = {
    "a": "#4c72b0",
    "b": "#55a868",
    "c": "#c44e52",
    "c_closed": "#dd8452",
    "c_png": "#c44e52",
    "c_png_closed": "#dd8452",
    "c_small": "#937860",
    "c_small_closed": "#da8bc3",
    "d": "#8172b2",
}
_STAGE_COLOURS = {
    "decode": "#8dd3c7",
    "dedup": "#ffffb3",
    "queue": "#bebada",
    "preprocess": "#fb8072",
    "fastsam": "#80b1d3",
    "sam2": "#fdb462",
    "postprocess": "#b3de69",
    "batch_wait": "#d9d9d9",
    "kafka": "#fccde5",
}


def _finite(value: Any) -> bool:
    return isinstance(value, int | float) and math.isfinite(value)


def make_chart(report: dict[str, Any], path: Path) -> Path:
    """Write a 2x2 chart of ``report`` (the JSON the runner saves) to ``path``."""
    summary = report["summary"]
    fig, axes = plt.subplots(2, 2, figsize=(14, 9.5))
    machine = report["machine"]
    fig.suptitle(
        f"segpipe bench — {machine['device']}, {machine['cpu_count']} CPU, torch {machine['torch_version']} "
        f"({machine['torch_threads']} threads), {report['config']['images']} images "
        f"{report['config']['width']}x{report['config']['height']}, imgsz {report['config']['imgsz']}, "
        f"median of {report['config']['repeat']}",
        fontsize=11,
    )
    _throughput(axes[0][0], summary)
    _stages(axes[0][1], summary)
    _curve(axes[1][0], summary)
    _memory_or_latency(axes[1][1], summary)
    fig.tight_layout(rect=(0, 0, 1, 0.96))
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _throughput(ax: Any, summary: dict[str, Any]) -> None:
    names = [k for k in _PIPELINE if summary.get(k)]
    values = [summary[k]["images_per_s"] for k in names]
    bars = ax.bar([_LABELS[k] for k in names], values, color=[_COLOURS[k] for k in names])
    for bar, value in zip(bars, values, strict=True):
        text = f"{value:,.0f}" if value >= 1000 else f"{value:.3g}"
        ax.annotate(text, (bar.get_x() + bar.get_width() / 2, value), ha="center", va="bottom", fontsize=9)
    ratios = summary.get("ratios", {})
    parts = [
        f"{k.replace('_over_', '/')} = {ratios[k]:.3f}" for k in ("b_over_a", "d_over_b") if _finite(ratios.get(k))
    ]
    ax.set_title("images/s, (c): hits/s (log scale)" + (f"   {', '.join(parts)}" if parts else ""), fontsize=10)
    ax.set_yscale("log")
    ax.tick_params(axis="x", labelsize=7)
    ax.grid(axis="y", alpha=0.3)


def _stages(ax: Any, summary: dict[str, Any]) -> None:
    # (c) bursts: all Kafka wait, off scale
    names = [k for k in ("a", "b", "c_closed", "c_png_closed", "c_small_closed", "d") if summary.get(k)]
    left = [0.0] * len(names)
    for stage in (*STAGES, "batch_wait", "kafka"):
        widths = [summary[k]["stages_ms"].get(stage) or 0.0 for k in names]
        if not any(widths):
            continue
        ax.barh([_LABELS[k] for k in names], widths, left=left, color=_STAGE_COLOURS[stage], label=stage)
        left = [a + b for a, b in zip(left, widths, strict=True)]
    for i, k in enumerate(names):
        ax.annotate(
            f" {left[i]:.0f} ms; 1/throughput {summary[k]['ms_per_image']:.0f} ms",
            (left[i], i),
            va="center",
            fontsize=8,
        )
    ax.set_xlim(right=max(left) * 1.45)
    ax.set_xlabel("mean ms per request, submitted -> result created (kafka = end-to-end minus the rest)")
    ax.set_title("latency by stage (burst of all images; queue/batch_wait = other requests' turn)", fontsize=10)
    ax.legend(fontsize=7, ncol=3, loc="upper right", bbox_to_anchor=(1.0, 0.45))  # beside the short (c) bar
    ax.invert_yaxis()
    ax.grid(axis="x", alpha=0.3)


def _curve(ax: Any, summary: dict[str, Any]) -> None:
    curve = (summary.get("e") or {}).get("curve") or []
    if not curve:
        ax.text(0.5, 0.5, "scenario (e) not run", ha="center", va="center")
        ax.set_axis_off()
        return
    sizes = [int(p["batch_size"]) for p in curve]
    ax.plot(sizes, [p["images_per_s"] for p in curve], "o-", label="segment_batch (e)")
    for p in curve:
        ax.annotate(f"{p['images_per_s']:.3g}", (int(p["batch_size"]), p["images_per_s"]), fontsize=8, va="bottom")
    if summary.get("a"):
        ax.axhline(summary["a"]["images_per_s"], ls="--", color="grey", label="per-image loop (a)")
    ax.set_xscale("log", base=2)
    ax.set_xticks(sizes, [str(s) for s in sizes])
    ax.set_xlabel("batch size")
    ax.set_ylabel("images/s")
    top = max([p["images_per_s"] for p in curve] + [summary["a"]["images_per_s"] if summary.get("a") else 0.0])
    ax.set_ylim(0, top * 1.2)
    ax.set_title("micro-batching vs the per-image loop", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(alpha=0.3)


def _memory_or_latency(ax: Any, summary: dict[str, Any]) -> None:
    memory = summary.get("f")
    if memory and memory.get("samples"):
        samples = memory["samples"]
        rss = memory["rss_mb"]
        ax.plot([s["results"] for s in samples], [s["rss_mb"] for s in samples], label="worker RSS")
        ax.axvline(memory["baseline_after_requests"], ls=":", color="grey", label="baseline taken")
        for bound in (0.95, 1.05):  # the target band, so a flat line is not magnified into a slope
            ax.axhline(rss["first"] * bound, ls="--", color="#c44e52", lw=0.8)
        ax.set_ylim(rss["first"] * 0.9, rss["first"] * 1.1)
        ax.set_xlabel("results delivered")
        ax.set_ylabel("MiB")
        ax.set_title(
            f"(f) worker RSS over {memory['requests']} requests ({memory['dedup_hits']} dedup hits): "
            f"first {rss['first']:.0f}, last {rss['last']:.0f}, max {rss['max']:.0f} MiB, "
            f"{rss['change_pct']:+.1f}%",
            fontsize=9,
        )
        ax.legend(fontsize=8)
        ax.grid(alpha=0.3)
        return
    names = [k for k in _PIPELINE if summary.get(k)]
    x = range(len(names))
    ax.bar([i - 0.2 for i in x], [summary[k]["latency_ms"]["p50"] for k in names], width=0.4, label="p50")
    ax.bar([i + 0.2 for i in x], [summary[k]["latency_ms"]["p99"] for k in names], width=0.4, label="p99")
    ax.set_xticks(list(x), [_LABELS[k] for k in names], fontsize=7)
    ax.set_ylabel("ms (request submitted -> result created)")
    ax.set_title("latency under a burst (scenario (f) not run)", fontsize=10)
    ax.legend(fontsize=8)
    ax.grid(axis="y", alpha=0.3)


def main() -> None:
    """``python -m bench.chart REPORT.json [OUT.png]``: redraw the chart of a saved report."""
    import json
    import sys

    source = Path(sys.argv[1])
    target = Path(sys.argv[2]) if len(sys.argv) > 2 else source.with_suffix(".png")
    print(make_chart(json.loads(source.read_text()), target))


if __name__ == "__main__":
    main()
