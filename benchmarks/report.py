"""Turn pytest-benchmark JSON into the markdown table of benchmarks/RESULTS.md.

    python benchmarks/report.py bench.json

One row per (layer, phase, threads): the median ms (min-max) of each
implementation and the speed-up of cyconv over each of the others (its variant
"cyconv-blas" / "cyconv-unfused" where the group has one, the reference, PyTorch).
The convolution-algorithm groups (conv2d-algorithm-*, conv2d-direct-*: one cyconv-<algorithm> per
algorithm, no plain cyconv) get a table of their own: every algorithm's time, what "measure" chose,
and each algorithm's time over PyTorch's.
"""

import json
import sys
from collections import defaultdict


def fmt(stats):
    return f"{stats['median'] * 1e3:.3g} ({stats['min'] * 1e3:.3g}-{stats['max'] * 1e3:.3g})"


def main(path):
    with open(path) as f:
        data = json.load(f)
    rows, chosen = defaultdict(dict), {}
    for b in data["benchmarks"]:
        info = b["extra_info"]
        rows[(b["group"], info["phase"], info["threads"])][info["impl"]] = b["stats"]
        if info["impl"] == "cyconv-measure":
            chosen[(b["group"], info["phase"], info["threads"])] = info.get("algorithm", "?")
    algorithm_rows = {k: v for k, v in rows.items() if "cyconv" not in v and any(i.startswith("cyconv-") for i in v)}
    rows = {k: v for k, v in rows.items() if k not in algorithm_rows}
    mi = data["machine_info"]
    torch_env = ", ".join(f"{k}={v}" for k, v in (mi.get("torch_isa_env") or {}).items() if v) or "none"
    print(f"cpu: {mi.get('cpu', {}).get('brand_raw', '?')}; cyconv ISA tier {mi.get('cyconv_isa', '?')}, "
          f"OpenMP {mi.get('cyconv_openmp')}, BLAS {mi.get('cyconv_blas', '?')}; torch ISA settings: "
          f"{torch_env}; times in ms, median (min-max)\n")
    if rows:
        print("| layer | phase | threads | cyconv | cyconv variant | reference | torch "
              "| x variant | x reference | x torch |")
        print("|---|---|---|---|---|---|---|---|---|---|")
    for (group, phase, threads), impls in sorted(rows.items()):
        variant = next((k for k in impls if k.startswith("cyconv-")), None)
        cy = impls.get("cyconv")
        cells = [fmt(impls[k]) if k in impls else "-" for k in ("cyconv", variant, "reference", "torch")]
        if variant:
            cells[1] = f"{variant}: {cells[1]}"
        ratios = [f"{impls[k]['median'] / cy['median']:.2f}" if cy and k in impls else "-"
                  for k in (variant, "reference", "torch")]
        print(f"| {group} | {phase} | {threads} | " + " | ".join(cells + ratios) + " |")
    if algorithm_rows:
        algorithms = sorted({i for impls in algorithm_rows.values() for i in impls if i.startswith("cyconv-")})
        print("\n| layer | phase | threads | " + " | ".join(algorithms) + " | measure chose | torch | "
              + " | ".join(f"{a} / torch" for a in algorithms) + " |")
        print("|---|---|---|" + "---|" * (2 * len(algorithms) + 2))
        for key, impls in sorted(algorithm_rows.items()):
            torch = impls.get("torch")
            cells = [fmt(impls[a]) if a in impls else "-" for a in algorithms]
            ratios = [f"{impls[a]['median'] / torch['median']:.2f}" if torch and a in impls else "-"
                      for a in algorithms]
            print(f"| {' | '.join(map(str, key))} | " + " | ".join(cells) + f" | {chosen.get(key, '-')} | "
                  + (fmt(torch) if torch else "-") + " | " + " | ".join(ratios) + " |")


if __name__ == "__main__":
    main(sys.argv[1])
