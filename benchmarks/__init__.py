"""Benchmarks: scripts that print figures and ratios (run by hand, never in the test suite)."""
