"""LeNet-5 training steps (batch 64) for SECONDS (default 15): mean and median ms per step, and how many
threads the busy-core governor (cyconv.kernels.threads._BusyCores) lets the kernels use. Run it with more OpenMP
threads than cores while another process spins, as a stand-in for a big machine with a busy core:

    python -c "while True: pass" &  OMP_NUM_THREADS=8 python benchmarks/bench_busy_threads.py 10; kill %1
"""
import sys
import time

import numpy as np

import cyconv
from cyconv import functional as F, models, optim
from cyconv.kernels import threads as _threads

rng = np.random.default_rng(0)
model = models.lenet5(rng=rng)
opt = optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
x, y = rng.standard_normal((64, 1, 28, 28), dtype=np.float32), rng.integers(0, 10, 64)


def step():
    loss, grad = F.softmax_cross_entropy(model(x), y)
    opt.zero_grad()
    model.backward(grad)
    opt.step()


for _ in range(20):  # warm-up
    step()
times, used = [], []
end = time.perf_counter() + float(sys.argv[1] if len(sys.argv) > 1 else 15)
while time.perf_counter() < end:
    t = time.perf_counter()
    step()
    times.append(time.perf_counter() - t)
    used.append(_threads._busy.threads(cyconv.get_num_threads()))
print(f"{cyconv.get_num_threads()} threads: {1e3 * np.mean(times):.1f} ms/step mean, median {1e3 * np.median(times):.1f}, "
      f"{len(times)} steps; threads allowed: mean {np.mean(used):.2f}, min {min(used)}")
