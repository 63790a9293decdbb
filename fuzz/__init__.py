"""Coverage-guided fuzzing (atheris) of the parsers that read hostile bytes.

`targets.py` holds the checks, one function per target taking the fuzzer's raw bytes; they are
plain Python so the regression tests in `tests/fuzz/` feed saved inputs through the very same
code. `python -m fuzz` (or `make fuzz`) runs them under atheris for a bounded time.
"""
