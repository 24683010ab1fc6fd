"""``make bench``: reproducible benchmarks on the embedded stack (see bench/README.md)."""
