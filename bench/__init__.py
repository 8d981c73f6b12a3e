"""jdmail's benchmark harness: ``bench/run WORKLOAD [options]`` (see bench/README.md)."""
