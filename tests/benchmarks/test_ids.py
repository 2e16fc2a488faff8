"""Every benchmark row has a stable id: a literal in the code, unique, listed in the README.

Read from the benchmarks' source (no benchmark runs): every ``Result(...)`` is
given ``id=`` as a string literal matching ``^B[1-6]\\.[a-z0-9_]+$``, or forwards a
parameter of a helper that every caller gives such a literal. A literal cannot
depend on the sizes (an f-string or a variable is refused), so an id stays the same
across runs, sizes and versions. ``run.py`` refuses duplicates at run time too, and
``test_smoke.py`` checks the rows of an actual run.
"""

from __future__ import annotations

import ast
import re
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from common import ID_RE, ROOT, Result

HERE = Path(__file__).resolve().parent
MODULES = sorted(p for p in HERE.glob("*.py") if not p.name.startswith("test_"))


@dataclass
class Scan:
    """Ids found in the benchmarks' source, and what is wrong with them."""

    ids: list[tuple[str, str]] = field(default_factory=list)  # (id, where)
    problems: list[str] = field(default_factory=list)


def _called(call: ast.Call) -> str | None:
    """The name a call calls: ``f(...)`` and ``obj.f(...)`` both give ``f``."""
    if isinstance(call.func, ast.Name):
        return call.func.id
    if isinstance(call.func, ast.Attribute):
        return call.func.attr
    return None


def _literal(node: ast.expr | None) -> str | None:
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return None


def _calls(tree: ast.Module) -> list[tuple[ast.Call, ast.FunctionDef | None]]:
    """Every call of the module with the function (or method) it sits in."""
    found: list[tuple[ast.Call, ast.FunctionDef | None]] = []

    def walk(node: ast.AST, inside: ast.FunctionDef | None) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.Call):
                found.append((child, inside))
            walk(child, child if isinstance(child, ast.FunctionDef) else inside)

    walk(tree, None)
    return found


def _params(func: ast.FunctionDef | None) -> list[str]:
    """Positional parameters as a caller passes them (``self``/``cls`` left out)."""
    names = [a.arg for a in func.args.args] if func else []
    return names[1:] if names[:1] in (["self"], ["cls"]) else names


def _argument(call: ast.Call, index: int, name: str) -> ast.expr | None:
    given = call.args[index] if index < len(call.args) else None
    return next((k.value for k in call.keywords if k.arg == name), given)


def scan_tree(tree: ast.Module, where: str, scan: Scan) -> None:
    """Ids given to ``Result(id=...)`` in ``tree``, directly or through helpers.

    A helper that passes one of its own parameters on as the id forwards it; every
    call of a forwarding helper must then give a literal (or forward it in turn).
    """
    calls = _calls(tree)
    #: function name -> (index, name) of the parameter it forwards as the id
    forwarders: dict[str, tuple[int, str]] = {"Result": (-1, "id")}
    done: set[int] = set()
    changed = True
    while changed:
        changed = False
        for call, inside in calls:
            name = _called(call)
            if name not in forwarders or id(call) in done:
                continue
            done.add(id(call))
            index, param = forwarders[name]
            given = _argument(call, index, param) if index >= 0 else None
            if index < 0:
                given = next((k.value for k in call.keywords if k.arg == "id"), None)
            line = f"{where}:{call.lineno}"
            value = _literal(given)
            if value is not None:
                scan.ids.append((value, line))
            elif given is None:
                scan.problems.append(f"{line}: {name}(...) without an id")
            elif isinstance(given, ast.Name) and inside and given.id in _params(inside):
                forwarders[inside.name] = (_params(inside).index(given.id), given.id)
                changed = True
            else:
                scan.problems.append(
                    f"{line}: {name}(...) gets an id that is not a string literal "
                    f"({ast.unparse(given)})"
                )


def scan_sources() -> Scan:
    scan = Scan()
    for path in MODULES:
        scan_tree(ast.parse(path.read_text(), filename=str(path)), path.name, scan)
    return scan


def readme_ids() -> set[str]:
    """Ids named in the README's Performance section (as `B4.wg_set`)."""
    text = (ROOT / "README.md").read_text()
    section = text.split("\n## Performance", 1)[1].split("\n## ", 1)[0]
    return set(re.findall(r"`(B[1-6]\.[a-z0-9_]+)`", section))


def test_every_row_has_a_literal_well_formed_id() -> None:
    scan = scan_sources()
    assert not scan.problems, "\n".join(scan.problems)
    assert len(scan.ids) >= 15  # every benchmark's rows were found
    bad = [f"{where}: {i!r}" for i, where in scan.ids if not ID_RE.fullmatch(i)]
    assert not bad, bad


def test_ids_are_unique_across_benchmarks() -> None:
    seen: dict[str, str] = {}
    for row_id, where in scan_sources().ids:
        assert row_id not in seen, f"{row_id} used at {seen[row_id]} and at {where}"
        seen[row_id] = where


def test_every_benchmark_has_ids_and_the_readme_lists_them() -> None:
    ids = {i for i, _ in scan_sources().ids}
    for bench in ("B1", "B2", "B3", "B4", "B5", "B6"):
        assert any(i.startswith(bench + ".") for i in ids), f"no {bench} row"
    missing = sorted(ids - readme_ids())
    assert not missing, f"README Performance section does not list {missing}"


def test_the_scan_refuses_an_id_built_from_sizes(tmp_path: Path) -> None:
    source = "def run(peers):\n    return [Result(id=f'B4.change_{peers}', name='x')]\n"
    scan = Scan()
    scan_tree(ast.parse(source), "fake.py", scan)
    assert scan.problems
    assert not scan.ids


def test_the_scan_follows_helpers_that_forward_the_id() -> None:
    source = (
        "class N:\n"
        "    def row(self, row_id):\n        return self._result(row_id)\n"
        "    def _result(self, row_id):\n        return Result(id=row_id, name='x')\n"
        "def run(k):\n    return [N().row('B6.mesh_1000'), N().row(f'B6.{k}')]\n"
    )
    scan = Scan()
    scan_tree(ast.parse(source), "fake.py", scan)
    assert [i for i, _ in scan.ids] == ["B6.mesh_1000"]
    assert len(scan.problems) == 1
    assert "f'B6.{k}'" in scan.problems[0]


@pytest.mark.parametrize("bad", ["B7.x", "B4.Change", "B4.change-10000", "B4", "b4.x", ""])
def test_result_refuses_a_malformed_id(bad: str) -> None:
    with pytest.raises(ValueError, match="does not match"):
        Result(
            id=bad,
            name="x",
            value=1.0,
            unit="s",
            baseline="y",
            baseline_value=1.0,
            better="lower",
            ratio_meaning="faster",
        )
