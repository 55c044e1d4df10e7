"""Turn pytest-benchmark JSON into the markdown table of benchmarks/RESULTS.md.

    python benchmarks/report.py bench.json

One row per (layer, phase, threads): the median ms (min-max) of each
implementation and the speed-up of cyconv over each of the others (its variant
"cyconv-blas" / "cyconv-unfused" where the group has one, the reference, PyTorch).
"""

import json
import sys
from collections import defaultdict


def fmt(stats):
    return f"{stats['median'] * 1e3:.3g} ({stats['min'] * 1e3:.3g}-{stats['max'] * 1e3:.3g})"


def main(path):
    with open(path) as f:
        data = json.load(f)
    rows = defaultdict(dict)
    for b in data["benchmarks"]:
        info = b["extra_info"]
        rows[(b["group"], info["phase"], info["threads"])][info["impl"]] = b["stats"]
    mi = data["machine_info"]
    torch_env = ", ".join(f"{k}={v}" for k, v in (mi.get("torch_isa_env") or {}).items() if v) or "none"
    print(f"cpu: {mi.get('cpu', {}).get('brand_raw', '?')}; cyconv ISA tier {mi.get('cyconv_isa', '?')}, "
          f"OpenMP {mi.get('cyconv_openmp')}, BLAS {mi.get('cyconv_blas', '?')}; torch ISA settings: "
          f"{torch_env}; times in ms, median (min-max)\n")
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


if __name__ == "__main__":
    main(sys.argv[1])
