#!/usr/bin/env python
"""Figures of the synthetic associative retrieval sweeps (paper Fig. 2, 3 and 5).

Capacity plots (Fig. 2 / 5): final evaluation loss against S, one line per model, log y;
one panel per results CSV (``recipes/fwp_recipes/synthetic.py`` writes them)::

    python scripts/plot_retrieval.py results/synthetic/capacity/results.csv -o capacity.png
    python scripts/plot_retrieval.py cap.csv rules.csv -o both.png --title "Setting 1" --title "Setting 2"

Learning curves (Fig. 3): evaluation loss against updates for every model of a setting
folder at one S (from the runs' ``history.csv``)::

    python scripts/plot_retrieval.py --curves results/synthetic/update_rules --num-keys 20 -o fig3.png

``--table`` also prints a Markdown table (models x S) of the plotted values. Needs
matplotlib (the package's optional extra ``plot``).
"""

import argparse
import csv
import math
import os
import sys
from collections import defaultdict
from typing import Dict, List, Tuple

FLOOR = 1e-5  # losses below this are drawn at the floor on the log axis


def read_csv(path: str) -> List[dict]:
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def _float(x) -> float:
    try:
        return float(x)
    except (TypeError, ValueError):
        return float("nan")


def by_model(rows: List[dict], metric: str) -> Dict[str, List[Tuple[int, float, str]]]:
    """model -> sorted [(S, value, status)]."""
    out = defaultdict(list)
    for r in rows:
        if metric not in r:
            raise KeyError(f"--metric {metric}: column not in the results CSV (columns: {', '.join(r)})")
        out[r["model"]].append((int(r["num_keys"]), _float(r[metric]), r.get("status", "")))
    return {m: sorted(v) for m, v in sorted(out.items())}


def markdown_table(series: Dict[str, List[Tuple[int, float, str]]], metric: str) -> str:
    sizes = sorted({s for v in series.values() for s, _, _ in v})
    lines = [f"| model \\ S ({metric}) | " + " | ".join(str(s) for s in sizes) + " |",
             "|---" * (len(sizes) + 1) + "|"]
    for model, pts in series.items():
        vals = {s: (y, st) for s, y, st in pts}
        cells = []
        for s in sizes:
            if s not in vals:
                cells.append("")
            else:
                y, st = vals[s]
                cells.append("diverged" if st == "diverged" or math.isnan(y) else f"{y:.2g}")
        lines.append(f"| {model} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


MAP_COLOURS = {"softmax": "black", "linear": "tab:blue", "dpfp1": "tab:orange", "dpfp2": "tab:green",
               "dpfp3": "tab:red", "favor32": "tab:purple", "favor64": "tab:purple", "favor128": "tab:brown",
               "favor512": "tab:pink"}
RULE_COLOURS = {"sum": "tab:blue", "delta": "tab:green", "delta-nosn": "tab:red", "fwm": "tab:purple"}
MAP_STYLES = {"dpfp1": ("-", "o"), "linear": ("--", "s"), "softmax": ("-", "o")}


def _style(model: str):
    """(colour, line style, marker): setting 1 names ("dpfp2") are coloured by feature map;
    setting 2 names ("dpfp1-delta") by update rule, with the feature map as line style."""
    fmap, _, rule = model.partition("-")
    if not rule:
        return MAP_COLOURS.get(fmap), "-", "o"
    ls, marker = MAP_STYLES.get(fmap, (":", "^"))
    return RULE_COLOURS.get(rule), ls, marker


def plot_capacity(ax, series, metric: str, title: str, logy: bool) -> None:
    for model, pts in series.items():
        xs = [s for s, y, _ in pts if not math.isnan(y)]
        ys = [max(y, FLOOR) if logy else y for s, y, _ in pts if not math.isnan(y)]
        colour, ls, marker = _style(model)
        (line,) = ax.plot(xs, ys, marker=marker, ms=3.5, ls=ls, color=colour, label=model)
        bad = [s for s, y, st in pts if math.isnan(y) or st == "diverged"]
        if bad:  # diverged runs: crosses on the top edge
            ax.plot(bad, [1.0] * len(bad), ls="none", marker="x", color=line.get_color(),
                    transform=ax.get_xaxis_transform(), clip_on=False)
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("number of unique keys S")
    ax.set_ylabel("final evaluation loss" if metric == "final_loss" else metric.replace("_", " "))
    ax.set_title(title, fontsize=10)
    ax.grid(True, which="major", alpha=0.3)
    ax.legend(fontsize=7, ncol=2)


def plot_curves(ax, folder: str, num_keys: int, title: str, logy: bool) -> int:
    n = 0
    for model in sorted(os.listdir(folder)):
        path = os.path.join(folder, model, f"S{num_keys}", "history.csv")
        if not os.path.exists(path):
            continue
        hist = read_csv(path)
        xs = [int(h["num_updates"]) for h in hist]
        ys = [_float(h["loss"]) for h in hist]
        colour, ls, _ = _style(model)
        ax.plot(xs, [max(y, FLOOR) if logy else y for y in ys], ls=ls, color=colour, label=model)
        n += 1
    if logy:
        ax.set_yscale("log")
    ax.set_xlabel("updates")
    ax.set_ylabel("evaluation loss")
    ax.set_title(title, fontsize=10)
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7)
    return n


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("results", nargs="*", help="results CSV(s) of the synthetic recipe; one panel each")
    p.add_argument("-o", "--output", required=True, help="PNG file to write")
    p.add_argument("--title", action="append", default=[], help="panel title (repeat per panel)")
    p.add_argument("--metric", default="final_loss", help="column to plot: final_loss (default, as the "
                   "authors' figures) or best_loss, final_accuracy")
    p.add_argument("--linear-y", action="store_true", help="linear instead of log y axis")
    p.add_argument("--curves", metavar="SETTING_DIR", help="learning curves of every model in this folder")
    p.add_argument("--num-keys", type=int, help="S of the learning curves (with --curves)")
    p.add_argument("--table", action="store_true", help="print a Markdown table of the plotted values")
    p.add_argument("--dpi", type=int, default=110)
    args = p.parse_args(argv)

    if args.curves and args.results:
        p.error("give either results CSVs or --curves SETTING_DIR, not both")
    if not args.curves and not args.results:
        p.error("nothing to plot: give results CSV(s) or --curves SETTING_DIR")
    if args.curves and args.num_keys is None:
        p.error("--curves needs --num-keys S")
    for path in args.results:
        if not os.path.exists(path):
            p.error(f"results CSV not found: {path}")
    if args.curves and not os.path.isdir(args.curves):
        p.error(f"--curves: not a folder: {args.curves}")

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        p.error("matplotlib is required: pip install 'fairseq-fwp[plot]' (or pip install matplotlib)")

    logy = not args.linear_y
    panels = 1 if args.curves else len(args.results)
    fig, axes = plt.subplots(1, panels, figsize=(6.0 * panels, 4.2), squeeze=False)
    titles = args.title + [""] * panels
    if args.curves:
        if plot_curves(axes[0][0], args.curves, args.num_keys, titles[0], logy) == 0:
            p.error(f"--curves: no {os.path.join(args.curves, '*', f'S{args.num_keys}', 'history.csv')} found")
    else:
        for i, path in enumerate(args.results):
            rows = read_csv(path)
            if not rows:
                p.error(f"{path} holds no finished runs")
            try:
                series = by_model(rows, args.metric)
            except KeyError as e:
                p.error(str(e.args[0]))
            plot_capacity(axes[0][i], series, args.metric, titles[i] or os.path.basename(path), logy)
            if args.table:
                print(f"\n{titles[i] or path}\n\n" + markdown_table(series, args.metric))
    fig.tight_layout()
    os.makedirs(os.path.dirname(os.path.abspath(args.output)), exist_ok=True)
    fig.savefig(args.output, dpi=args.dpi)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
