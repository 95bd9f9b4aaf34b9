"""hubd benchmarks: `python -m bench` (see bench/README.md). Never part of `make test`."""
