"""The generated tables in docs/ match the code (run `python -m shoal.docgen` to refresh)."""

from shoal import docgen


def test_generated_doc_tables_are_current() -> None:
    assert docgen.stale() == [], "run: python -m shoal.docgen"


def test_every_error_code_is_documented() -> None:
    """docs/api.md names every code Shoal can send (Hrana's own are also explained in
    docs/hrana.md, whose table test_hrana_proto keeps current)."""
    from shoal.errors import Code

    api = (docgen.DOCS / "api.md").read_text()
    hrana = (docgen.DOCS / "hrana.md").read_text()
    assert [code for code in Code if f"`{code}`" not in api] == []
    assert [code for code in Code if code.hrana and f"`{code}`" not in hrana] == []
