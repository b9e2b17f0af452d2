"""Load generation and side-by-side benchmarks (`seekserve bench`)."""
