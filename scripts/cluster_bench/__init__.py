"""The cluster benchmark (``scripts/bench_cluster.py``): one module per figure."""
