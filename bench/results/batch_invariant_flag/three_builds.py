"""Alternate children of three builds (2b9d1dc, main, new) for R rounds; medians and per-round ratios."""
import json, os, subprocess, sys
sys.path.insert(0, "/work/wt-f/bench")
import common
R, th = int(sys.argv[1]), sys.argv[2]
# interpreters whose PYTHONPATH holds each build (the development machine's paths)
builds = {"2b9d1dc": ["/work/base-python"], "main": ["/work/f-base-python"],
          "new": ["env", "PYTHONPATH=/work/wt-f", "/work/venv/bin/python"]}
runs = {k: [] for k in builds}; loads = []
for r in range(R):
    for k, cmd in builds.items():
        loads.append(common.other_load(0.3))
        out = subprocess.run(cmd + ["bench/results/batch_invariant_flag/one_sample_child.py", th], capture_output=True, text=True).stdout
        res = json.loads([l for l in out.splitlines() if l.startswith("RESULT ")][0][7:])
        runs[k].append(res["cases"])
med = lambda v: sorted(v)[len(v) // 2]
print(f"threads {th}, {R} rounds, other load (CPUs) before each child: median {med(loads):.2f}, max {max(loads):.2f}")
print(f"{'case':28s} {'2b9d1dc':>9s} {'main':>9s} {'new':>9s}  new/2b9d1dc  new/main  (µs, median of rounds; ratios median of per-round)")
for c in runs["new"][0]:
    v = {k: [x[c] * 1e6 for x in runs[k]] for k in builds}
    r_old = med([n / o for n, o in zip(v["new"], v["2b9d1dc"])]); r_main = med([n / o for n, o in zip(v["new"], v["main"])])
    print(f"{c:28s} {med(v['2b9d1dc']):9.2f} {med(v['main']):9.2f} {med(v['new']):9.2f}  {r_old:10.2f}  {r_main:8.2f}")
