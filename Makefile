.PHONY: bench

# The engine benchmark of issue 2 (not a test); writes its tables into docs/performance.md.
bench:
	.venv/bin/python benchmarks/bench_engine.py --write
