"""``make bench``: the performance report of kd_detect (see ``benchmarks/bench.py``)."""
