"""What a rung's ranking is worth on a recorded table (benchmarks/record_curves.py): rank correlations.

For every evaluation point (a possible ASHA rung), over the table's configurations:

- rung -> final: Spearman between the subset score there and the configuration's best
  full-validation score (does an early ranking predict the final one?);
- loss -> final: the same with the subset's validation loss there (negated: lower is better), where
  the table recorded it (what ``scheduler.rung_metric: eval_loss`` ranks on);
- subset -> full: Spearman between the subset score there and the full-validation score there
  (is the subset a faithful stand-in?), for every recorded subset size.

The last line prints the first evaluation's rung -> final correlation.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from record_curves import spearman  # noqa: E402
from replay import DEFAULT_TABLE, CurveTable  # noqa: E402


def correlations(table: CurveTable) -> list[dict]:
    curves = [c["rows"] for c in table.curves.values()]
    final = [max(r["full_rougeL"] for r in rows) for rows in curves]
    sizes = {table.settings["subset"]: "subset_rougeL"}
    sizes.update({int(k[len("first") : -len("_rougeL")]): k for k in curves[0][0] if k.startswith("first")})
    points = []
    for i in range(min(len(rows) for rows in curves)):
        at = [rows[i] for rows in curves]
        point = {
            "samples": at[0]["samples"],
            "rung_to_final": spearman([r["subset_rougeL"] for r in at], final),
            "full_to_final": spearman([r["full_rougeL"] for r in at], final),
        }
        if table.has_loss:
            point["loss_to_final"] = spearman([-r["subset_loss"] for r in at], final)
        for n, key in sorted(sizes.items()):
            point[f"subset{n}_to_full"] = spearman([r[key] for r in at], [r["full_rougeL"] for r in at])
        points.append(point)
    return points


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--table", type=Path, default=DEFAULT_TABLE)
    args = p.parse_args()
    table = CurveTable(args.table)
    points = correlations(table)
    print(f"table {args.table.name}: {len(table.curves)} configurations; {table.meta['data']}")
    columns = list(points[0])
    print("  ".join(f"{c:>16s}" for c in columns))
    for point in points:
        print("  ".join(f"{point[c]:>16.2f}" if c != "samples" else f"{point[c]:>16d}" for c in columns))
    loss = f", its loss {points[0]['loss_to_final']:.2f}" if table.has_loss else ""
    print(
        f"curve_signal: Spearman(first rung on the subset, best full validation) {points[0]['rung_to_final']:.2f}"
        + loss
    )


if __name__ == "__main__":
    main()
