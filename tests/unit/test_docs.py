"""The generated tables in docs/ match the code (run `python -m shoal.docgen` to refresh)."""

from shoal import docgen


def test_generated_doc_tables_are_current() -> None:
    assert docgen.stale() == [], "run: python -m shoal.docgen"


def test_every_error_code_is_documented() -> None:
    from shoal.errors import CODES

    text = (docgen.DOCS / "api.md").read_text()
    missing = [code for code in CODES if f"`{code}`" not in text]
    assert missing == []
