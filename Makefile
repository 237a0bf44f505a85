.PHONY: bench

# The engine benchmark of issue 2 (not a test); writes its tables into docs/performance.md.
bench:
	.venv/bin/python benchmarks/bench_engine.py --write

.PHONY: ndif-check

# NDIF's own server stack on this machine, and `infoflow decompose --remote` against it (issue 27,
# docs/ndif.md). Heavy (a Python 3.12 venv with torch and Ray under .cache/ndif): not in setup or CI.
ndif-check:
	PROJECT_VENV=$${PROJECT_VENV:-.venv} bash tools/ndif/check.sh
