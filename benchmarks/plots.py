"""Plots from a folder of bench JSON results (matplotlib, Agg backend: no display needed).

    python -m skipdecode.benchmarks.plots RESULTS_DIR [--out PLOTS_DIR]

Each figure is drawn only when its inputs are in the folder:

- ``serve_throughput.png``: output tokens/s vs concurrency, one line per system (``bench
  serve``), with ``bench hf`` as a point at its batch size;
- ``latency_context.png``: decode tokens/s vs context length per batch size and speedup
  (``bench latency``);
- ``kv_memory.png`` and ``kv_capacity.png``: KV MiB per sequence, and the sequences that fit the
  budget, per speedup (``bench kv``);
- ``throughput_gain.png``: measured gain vs theoretical and FLOP-ideal (``bench throughput``).
"""

from __future__ import annotations

import argparse
import json
from collections import defaultdict
from pathlib import Path

import matplotlib
import matplotlib.ticker

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402 (the backend must be chosen first)


def load_results(folder: Path) -> dict[str, list[dict]]:
    """Every ``*.json`` in ``folder`` with a ``benchmark`` field, grouped by benchmark name."""
    grouped: dict[str, list[dict]] = defaultdict(list)
    for path in sorted(folder.glob("*.json")):
        try:
            payload = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if isinstance(payload, dict) and "benchmark" in payload:
            grouped[payload["benchmark"]].append(payload)
    return grouped


def _log2_axis(ax, values) -> None:
    """A base-2 log x axis labelled with the measured values themselves."""
    ax.set_xscale("log", base=2)
    ax.set_xticks(sorted(set(values)))
    ax.xaxis.set_major_formatter(matplotlib.ticker.ScalarFormatter())
    ax.xaxis.set_minor_locator(matplotlib.ticker.NullLocator())


def _save(fig, path: Path) -> Path:
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def plot_serve_throughput(serves: list[dict], hfs: list[dict], out: Path) -> Path | None:
    """Output tokens/s vs concurrency per serve system; HF generate as a point."""
    fig, ax = plt.subplots(figsize=(6.5, 4))
    drawn = False
    for payload in serves:
        rows = [r for r in payload["results"] if r.get("request_rate") is None]
        if rows:
            xs = [r["concurrency"] for r in rows]
            ax.plot(
                xs, [r["output_tokens_per_s"] for r in rows], marker="o", label=payload["system"]
            )
            drawn = True
    for payload in hfs:
        for row in payload["results"]:
            ax.plot([row["batch_size"]], [row["output_tokens_per_s"]], "k*", markersize=11,
                    label=f"HF generate (batch {row['batch_size']})")  # fmt: skip
            drawn = True
    if not drawn:
        plt.close(fig)
        return None
    ax.set(xscale="log", xlabel="concurrent requests", ylabel="output tokens/s")
    ax.set_title("Throughput vs concurrency")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out / "serve_throughput.png")


def plot_latency_context(latencies: list[dict], out: Path) -> Path | None:
    """Decode tokens/s vs context length, one line per batch size and speedup."""
    lines: dict[str, list[tuple[int, float]]] = defaultdict(list)
    for payload in latencies:
        for row in payload["results"]:
            key = f"batch {row['batch_size']}, {row['label']}"
            lines[key].append((row["context_len"], row["tokens_per_s"]))
    if not lines:
        return None
    fig, ax = plt.subplots(figsize=(6.5, 4))
    for key, points in lines.items():
        points.sort()
        ax.plot([p[0] for p in points], [p[1] for p in points], marker="o", label=key)
    _log2_axis(ax, [x for points in lines.values() for x, _ in points])
    ax.set(yscale="log", xlabel="context length (tokens)", ylabel="decode tokens/s")
    ax.set_title("Decode throughput vs context length")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, out / "latency_context.png")


def plot_kv(kvs: list[dict], out: Path) -> list[Path]:
    """KV MiB per sequence, and sequences in the budget, per speedup (the last kv file)."""
    if not kvs:
        return []
    payload = kvs[-1]
    rows, args = payload["results"], payload["args"]
    labels = [f"{r['label']}\n({r['theoretical_speedup']:.2f}x)" for r in rows]
    setting = f"{args['input_len']} in + {args['output_len']} out"
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.bar(labels, [r["kv_mib_per_seq"] for r in rows], color="tab:blue")
    ax.set(xlabel="target (theoretical) speedup", ylabel="KV MiB per sequence")
    ax.set_title(f"KV memory per sequence ({setting})")
    paths = [_save(fig, out / "kv_memory.png")]
    fig, ax = plt.subplots(figsize=(5.5, 4))
    ax.bar(labels, [r["max_concurrent_seqs"] for r in rows], color="tab:green")
    ax.set(xlabel="target (theoretical) speedup", ylabel="sequences that fit")
    ax.set_title(f"Concurrent sequences in {args['budget_mib']:g} MiB of KV ({setting})")
    paths.append(_save(fig, out / "kv_capacity.png"))
    return paths


def plot_throughput_gain(throughputs: list[dict], out: Path) -> Path | None:
    """Measured, theoretical and FLOP-ideal gains per speedup (the last throughput file)."""
    if not throughputs:
        return None
    rows = throughputs[-1]["results"]
    series = [
        ("measured_gain", "measured"),
        ("theoretical_speedup", "theoretical"),
        ("flop_ideal_gain", "FLOP-ideal (decode)"),
        ("flop_ideal_gain_e2e", "FLOP-ideal (with prefill)"),
    ]
    fig, ax = plt.subplots(figsize=(6.5, 4))
    width = 0.8 / len(series)
    for i, (key, name) in enumerate(series):
        xs = [j + (i - (len(series) - 1) / 2) * width for j in range(len(rows))]
        ax.bar(xs, [r[key] for r in rows], width, label=name)
    ax.set_xticks(range(len(rows)), [r["label"] for r in rows])
    ax.set(xlabel="target speedup", ylabel="gain vs 1x")
    ax.set_title("Offline throughput gain")
    ax.axhline(1.0, color="k", linewidth=0.6)
    ax.legend(fontsize=8)
    return _save(fig, out / "throughput_gain.png")


def make_plots(results_dir: Path, out: Path | None = None) -> list[Path]:
    """Draw every figure the folder has data for; returns the files written."""
    out = out or results_dir / "plots"
    out.mkdir(parents=True, exist_ok=True)
    results = load_results(results_dir)
    paths = [
        plot_serve_throughput(results.get("serve", []), results.get("hf", []), out),
        plot_latency_context(results.get("latency", []), out),
        *plot_kv(results.get("kv", []), out),
        plot_throughput_gain(results.get("throughput", []), out),
    ]
    return [p for p in paths if p is not None]


def main(argv: list[str] | None = None) -> int:
    """Entry point: draw the plots and print their paths."""
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("results_dir", type=Path, help="folder with the bench JSON files")
    parser.add_argument("--out", type=Path, default=None, help="default: RESULTS_DIR/plots")
    args = parser.parse_args(argv)
    for path in make_plots(args.results_dir, args.out):
        print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
