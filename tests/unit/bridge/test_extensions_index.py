"""bridge.extensions.ExtensionTable: lookups by number through its index (issue 6: thousands of entries)."""

from __future__ import annotations

from bridge.extensions import Extension, ExtensionTable, make_extension


def test_lookup_in_a_large_table_and_equality_ignore_the_index() -> None:
    base = make_extension("100", "pw", realm="r", n=2**4)
    entries = [Extension(str(1000 + i), base.scrypt, "r", base.ha1_md5, base.ha1_sha256) for i in range(3000)]
    table = ExtensionTable(tuple(entries))
    assert table.get("3999") is entries[-1]
    assert table.get("1000") is entries[0]
    assert table.get("4000") is None
    assert "2500" in table
    assert 2500 not in table
    assert table == ExtensionTable(tuple(entries))
    assert "_index" not in repr(ExtensionTable(tuple(entries[:1])))


def test_changes_keep_the_index_in_step() -> None:
    a = make_extension("100", "a", realm="r", n=2**4)
    b = make_extension("100", "b", realm="r", n=2**4)
    table = ExtensionTable((a,)).with_extension(b)
    assert table.get("100") is b
    assert table.without("100").get("100") is None
    # a repeated number (only a hand-built table can have one): the first entry wins, as before
    assert ExtensionTable((a, b)).get("100") is a
