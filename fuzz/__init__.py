"""Coverage-guided fuzz targets (atheris) for every parser that reads untrusted bytes.

Each module `fuzz/<target>.py` defines `one_input(data: bytes) -> None`, which feeds `data` to the
parser under test and asserts its contract (only the documented error type escapes; round trips hold).
`python -m fuzz.<target> [libFuzzer flags] fuzz/corpus/<target>` runs it under atheris; the seeds live
in `fuzz/corpus/<target>/` and are replayed by `tests/fuzz/test_fuzz_corpus.py`. Inputs that still fail
because of a bug in a file owned by someone else wait in `fuzz/corpus/<target>/pending/`.
"""
