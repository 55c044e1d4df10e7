"""Training: the loop (train.py), the optimisers and schedules (optim.py), checkpoints (checkpoint.py), and
data-parallel training over MPI (distributed.py; mpi4py is imported only when used)."""
