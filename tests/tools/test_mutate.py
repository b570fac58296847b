"""The mutation tool itself (issue 19): the mutants it makes, and killed vs survived."""

from __future__ import annotations

import ast
from pathlib import Path

from tools import mutate

SAMPLE = '''"""A sample module."""

ALLOWED = frozenset({"read", "write"})
LIMIT = 10


def allowed(verb, n):
    """Docstrings are not mutated."""
    if verb in ALLOWED and not n > LIMIT:
        return True
    log.warning("refused %s", verb)
    return False
'''

TESTS = '''from pkg.sample import allowed


def test_read_is_allowed():
    assert allowed("read", 1)


def test_over_the_limit():
    assert not allowed("read", 11)
'''


def test_sites_cover_every_kind() -> None:
    found = mutate.sites(ast.parse(SAMPLE))
    descriptions = {(s.kind, s.description) for s in found}
    kinds = {s.kind for s in found}
    assert kinds == {"drop", "constant", "compare", "boolop", "not", "delete", "return"}
    assert ("drop", "drop `'write'` from set `{'read', 'write'}`") in descriptions
    assert ("constant", "`10` -> `11`") in descriptions
    assert ("compare", "`in` -> `not in` in `verb in ALLOWED`") in descriptions
    assert ("compare", "`>` -> `>=` in `n > LIMIT`") in descriptions
    assert ("boolop", "`and` -> `or` in `verb in ALLOWED and (not n > LIMIT)`") in descriptions
    assert ("not", "`not n > LIMIT` -> `n > LIMIT`") in descriptions
    assert ("return", "`return True` -> `return None`") in descriptions
    assert ("constant", "`True` -> `False`") in descriptions
    # Neither the docstrings nor the log message's string are touched.
    assert not any("Docstrings" in d for _, d in descriptions)
    assert not any("refused" in d for k, d in descriptions if k == "constant")
    for i in range(len(found)):
        compile(mutate.mutate(SAMPLE, i), "sample.py", "exec")  # every mutant is valid code


def test_mutant_applies_one_change() -> None:
    index = next(i for i, s in enumerate(mutate.sites(ast.parse(SAMPLE)))
                 if s.description == "drop `'write'` from set `{'read', 'write'}`")
    mutated = mutate.mutate(SAMPLE, index)
    assert "frozenset({'read'})" in mutated
    assert ast.dump(ast.parse(mutated)) != ast.dump(ast.parse(SAMPLE))


def test_killed_survived_and_harmless(tmp_path: Path) -> None:
    pkg = tmp_path / "src" / "pkg"
    pkg.mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "sample.py").write_text(SAMPLE.replace('    log.warning("refused %s", verb)\n',
                                                  '    print("refused")  # mutate: harmless '
                                                  '(a message)\n'))
    (tmp_path / "tests").mkdir()
    (tmp_path / "tests" / "test_sample.py").write_text(TESTS)
    table = {"sample.py": ("tests/test_samp*.py",)}
    wanted = {"`>` -> `<=` in `n > LIMIT`", "`>` -> `>=` in `n > LIMIT`",
              "drop `'read'` from set `{'read', 'write'}`",
              "drop `'write'` from set `{'read', 'write'}`"}
    [result] = mutate.run(["sample.py"], root=tmp_path, package="src/pkg", table=table,
                          jobs=2, shared=(),
                          only=lambda m: m.description in wanted or m.harmless is not None)
    assert result.error is None and result.tests == ["tests/test_sample.py"]
    status = {m.description: m.status for m in result.mutants}
    assert status["`>` -> `<=` in `n > LIMIT`"] == "killed"  # test_over_the_limit fails
    assert status["drop `'read'` from set `{'read', 'write'}`"] == "killed"
    assert status["drop `'write'` from set `{'read', 'write'}`"] == "survived"  # untested
    assert status["`>` -> `>=` in `n > LIMIT`"] == "survived"  # the boundary is untested
    [marked] = [m for m in result.mutants if m.harmless is not None]
    assert marked.kind == "delete" and marked.harmless == "a message"
    assert marked.status == "survived"
    assert (result.count("killed"), result.count("survived"), result.harmless) == (2, 2, 1)
    assert result.score == 50.0  # the harmless one is not scored
    assert "drop `'write'`" in mutate.survivors_text(result, tmp_path, "src/pkg")
    assert "| sample.py |" in mutate.summary([result])


def test_rescore_applies_the_harmless_list_as_it_is_now(tmp_path: Path) -> None:
    pkg = tmp_path / "src" / "pkg"
    pkg.mkdir(parents=True)
    (pkg / "sample.py").write_text(SAMPLE.replace(
        "        return True\n", "        return True  # mutate: harmless return (a test)\n"))
    log = tmp_path / "results.txt"
    log.write_text("survived sample.py:10: return: `return True` -> `return None`\n"
                   "killed   sample.py:10: delete: delete `return True`\n"
                   "survived sample.py:9: compare: `>` -> `>=` in `n > LIMIT`\n")
    [result] = mutate.rescore(log, tmp_path, "src/pkg", {"sample.py": ("tests/*.py",)})
    status = {m.description: (m.status, m.harmless) for m in result.mutants}
    assert status["`return True` -> `return None`"] == ("survived", "a test")
    assert status["delete `return True`"] == ("killed", None)  # the marker names its kind
    # harmless: the marked one and the log call (not in the log: it stays pending)
    assert (result.count("killed"), result.count("survived"), result.harmless) == (1, 1, 2)


def test_a_marker_on_a_comment_line_just_above_counts_for_the_statement(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "m.py").write_text(
        "def f(x):\n"
        "    # mutate: harmless compare (a reason above)\n"
        "    if x > 1:\n"
        "        return 1\n"
        "    # an ordinary comment\n"
        "    return x == 2\n")
    found = {m.description: m.harmless for m in mutate.list_mutants(tmp_path, "pkg", "m.py")
             if m.kind == "compare"}
    assert found == {"`>` -> `>=` in `x > 1`": "a reason above",
                     "`>` -> `<=` in `x > 1`": "a reason above",
                     "`==` -> `!=` in `x == 2`": None}


def test_a_marker_may_name_the_one_mutation_it_covers(tmp_path: Path) -> None:
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "m.py").write_text(
        "def f(x):\n"
        "    try:\n"
        "        return int(x)\n"
        "    except (ValueError, TypeError):  # mutate: harmless drop TypeError (a reason)\n"
        "        return 0\n")
    found = {m.description: m.harmless for m in mutate.list_mutants(tmp_path, "pkg", "m.py")
             if m.kind == "drop"}
    assert found == {"drop `ValueError` from tuple `(ValueError, TypeError)`": None,
                     "drop `TypeError` from tuple `(ValueError, TypeError)`": "a reason"}


def test_a_protocol_body_is_not_deleted() -> None:
    """``...`` as a body changes nothing when deleted: no site (a docstring neither)."""
    found = mutate.sites(ast.parse('class P(Protocol):\n    def f(self) -> int: ...\n\n'
                                   'def g() -> int:\n    """Doc."""\n    ...\n    return 1\n'))
    assert [s.description for s in found if s.kind == "delete"] == ["delete `return 1`"]
