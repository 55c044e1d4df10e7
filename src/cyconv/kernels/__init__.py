"""The kernels: the compiled extension (_kernels.pyx and one .pxi per op family, over the C in csrc/), their
NumPy twins (reference.py), and the process-wide settings the kernels run with: the instruction-set tier
(isa.py), the thread count (threads.py), and malloc's tuning for the `cyconv` command (malloc.py)."""
