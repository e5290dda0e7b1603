import os

# Two cores: keep intra-op threads fixed so tests behave the same everywhere.
os.environ.setdefault("OMP_NUM_THREADS", "2")
