"""One child: times the one-sample products and a batch-1 training step in whichever fastdl is on the path."""
import inspect, json, os, sys, time
import numpy as np
import fastdl
from fastdl import nn, ops, optim
fastdl.set_num_threads(int(sys.argv[1]))
rng = np.random.default_rng(0)
has = "batch_invariant" in inspect.signature(ops.linear_forward).parameters
def med(f, n, reps=9):
    ts = []
    for _ in range(reps):
        t0 = time.perf_counter()
        for _ in range(n): f()
        ts.append((time.perf_counter() - t0) / n)
    ts.sort(); return ts[len(ts) // 2]
cases = {}
for K, N in ((784, 256), (256, 128), (128, 10)):
    w = rng.standard_normal((N, K), dtype=np.float32); b = rng.standard_normal(N, dtype=np.float32)
    for M in (1, 2):
        x = rng.standard_normal((M, K), dtype=np.float32); out = np.empty((M, N), np.float32)
        # literal keywords (a **kw call costs ~0.3 us more than either)
        if has:
            cases[f"{M}x{K}->{N} bi=True"] = lambda x=x, w=w, b=b, out=out: ops.linear_forward(
                x, w, b, "relu", out=out, batch_invariant=True)
            cases[f"{M}x{K}->{N} bi=False"] = lambda x=x, w=w, b=b, out=out: ops.linear_forward(
                x, w, b, "relu", out=out, batch_invariant=False)
        else:
            for flag in (True, False):
                cases[f"{M}x{K}->{N} bi={flag}"] = lambda x=x, w=w, b=b, out=out: ops.linear_forward(
                    x, w, b, "relu", out=out)
model = nn.Sequential(nn.Linear(784, 256, rng=0), nn.ReLU(), nn.Linear(256, 128, rng=0), nn.ReLU(), nn.Linear(128, 10, rng=0))
loss_fn = nn.CrossEntropyLoss(); opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
x1 = rng.standard_normal((1, 784), dtype=np.float32); y1 = np.array([3], np.int64)
def step():
    out = model(x1); loss_fn(out, y1); opt.zero_grad(); model.backward(loss_fn.backward()); opt.step()
cases["train step batch 1"] = step
t_end = time.perf_counter() + 0.5
while time.perf_counter() < t_end:
    for f in cases.values(): f()
res = {k: med(f, 2000 if "step" not in k else 300) for k, f in cases.items()}
print("RESULT " + json.dumps({"fastdl": fastdl.__file__, "cases": res}))
