"""The README stays true: its quick start, its settings table, and what CI runs."""

from __future__ import annotations

import re
from pathlib import Path

from shared.settings import FIELDS, env_name

ROOT = Path(__file__).resolve().parents[2]
README = (ROOT / "README.md").read_text()


def _section(title: str) -> str:
    match = re.search(rf"^## {title}\n(.*?)(?=^## )", README, re.S | re.M)
    assert match, f"README has no '## {title}' section"
    return match.group(1)


def test_quick_start_is_exactly_two_commands():
    blocks = re.findall(r"```sh\n(.*?)```", _section("Quick start"), re.S)
    assert blocks == ["make demo\nmake test\n"]


def test_ci_runs_the_readme_test_command():
    script = (ROOT / ".ci" / "run").read_text()
    commands = [line for line in script.splitlines() if line and not line.startswith("#")]
    # The README's test command runs first, and a failure in it fails CI (set -e).
    assert "set -euo pipefail" in commands
    make_lines = [line for line in commands if line.startswith(("make ", "exec make "))]
    assert make_lines[0].removeprefix("exec ") == "make test"
    makefile = (ROOT / "Makefile").read_text()
    for target in ("setup", "demo", "test", "check", "bench"):
        assert re.search(rf"^{target}:", makefile, re.M), target


def test_every_setting_is_documented():
    table = _section("Settings")
    missing = [env_name(f) for f in FIELDS if f"`{env_name(f)}`" not in table]
    assert not missing, f"README settings table lacks {missing}"


def test_constraints_pin_every_direct_dependency_at_the_same_version():
    import tomllib

    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    direct = list(project["dependencies"])
    for extra in project["optional-dependencies"].values():
        direct += extra
    lines = (ROOT / ".ci" / "constraints.txt").read_text().splitlines()
    pins = {ln.split("==")[0].lower().replace("_", "-"): ln for ln in lines if "==" in ln}
    for requirement in direct:
        name, _, version = requirement.partition("==")
        assert version, f"{requirement} is not pinned"
        key = name.lower().replace("_", "-")
        assert pins.get(key) == f"{pins[key].split('==')[0]}=={version}", requirement


def test_the_reasons_table_is_the_vocabulary():
    """README's table of decisions and reasons says what ``shared/reasons.py`` says."""
    from shared.reasons import MEANINGS

    rows = dict(re.findall(r"^\| `([a-z-]+)` \| ([^|]+?) \|$", README, re.M))
    assert {code: rows.get(code) for code in MEANINGS} == MEANINGS


# --- docs/design.md: the design in the repository, and the pointers to it -------------------

DESIGN = ROOT / "docs" / "design.md"
#: Where code and docs may point into docs/design.md (the tree the project ships).
POINTER_ROOTS = ("shared", "producers", "consumers", "tests", "compose")
_SECTION = re.compile(r"^#{2,3} (\d+(?:\.\d+)?)\.? ", re.M)
_REF = re.compile(r"§(\d+(?:\.\d+)?)")


def _design_sections() -> set[str]:
    return set(_SECTION.findall(DESIGN.read_text()))


def _pointer_files() -> list[Path]:
    files = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
    for top in POINTER_ROOTS:
        files += sorted(p for p in (ROOT / top).rglob("*.py") if "static" not in p.parts)
    return files


def _pointers(path: Path) -> list[tuple[int, str]]:
    """(line, section) of every ``§n`` that points into docs/design.md from ``path``.

    In docs/design.md and the README every ``§n`` does; elsewhere, those on a line that
    names ``docs/design.md``.
    """
    everywhere = path in (DESIGN, ROOT / "README.md")
    found = []
    for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1):
        if everywhere or "docs/design.md" in line:
            found += [(number, ref) for ref in _REF.findall(line)]
    return found


def test_design_sections_are_numbered_once_and_in_order():
    numbers = _SECTION.findall(DESIGN.read_text())
    assert len(numbers) == len(set(numbers)), "a section number is used twice"
    keys = [tuple(int(n) for n in number.split(".")) for number in numbers]
    assert keys == sorted(keys), "sections are out of order"
    top = [k[0] for k in keys if len(k) == 1]
    assert top == list(range(1, len(top) + 1)), "top-level sections are not 1, 2, 3, ..."
    assert all(k[:1] in [(t,) for t in top] for k in keys), "a subsection without its section"


def test_every_pointer_to_the_design_names_a_section():
    """``docs/design.md §n`` in code, tests, the README and the docs names an existing section."""
    sections = _design_sections()
    dangling = [
        f"{path.relative_to(ROOT)}:{line}: §{ref}"
        for path in _pointer_files()
        for line, ref in _pointers(path)
        if ref not in sections
    ]
    assert not dangling, f"pointers to sections docs/design.md does not have: {dangling}"


def test_nothing_points_to_a_design_outside_the_repository():
    """Comments cite docs/design.md, never a design file that is not in the repository."""
    outside = re.compile(r"\bDESIGN" + r"(\.md\b| §)")  # split: this line must not match
    found = [
        f"{path.relative_to(ROOT)}:{number}"
        for path in _pointer_files()
        for number, line in enumerate(path.read_text(errors="replace").splitlines(), 1)
        if outside.search(line)
    ]
    assert not found, f"point these at docs/design.md §n instead: {found}"


def test_every_event_the_listener_decodes_is_in_the_design():
    from shared.chain import decode

    signatures = {
        value for name, value in vars(decode).items() if name.endswith("_SIG") and "(" in value
    }
    assert signatures, "shared/chain/decode.py names no *_SIG signatures"
    documented = set()
    for name, params in re.findall(r"^event (\w+)\((.*)\);$", DESIGN.read_text(), re.M):
        types = [part.split()[0] for part in params.split(",")]
        documented.add(f"{name}({','.join(types)})")
    assert signatures <= documented, f"not in docs/design.md: {signatures - documented}"


def _layout_rows() -> list[list[str]]:
    match = re.search(r"^## Layout\n(.*?)(?=^## |\Z)", README, re.S | re.M)
    assert match, "README has no '## Layout' section"
    lines = [ln for ln in match.group(1).splitlines() if ln.startswith("| ")]
    assert lines[0].split("|")[1:-1] == [
        f" {title} "
        for title in ("stage", "package", "command", "pure modules", "store (Redis keys)", "tests")
    ], lines[0]
    rows = [re.split(r"(?<!\\)\|", line)[1:-1] for line in lines[2:]]
    assert all(len(row) == 6 for row in rows), "a layout row does not have six cells"
    return rows


def _package(cell: str) -> str:
    match = re.match(r" `([a-z_/]+/)`", cell)
    assert match, f"layout row without a package: {cell!r}"
    return match.group(1)


def test_layout_table_names_every_component_folder():
    packages = {_package(row[1]) for row in _layout_rows()}
    folders = {"shared/", "compose/"}
    for top in ("producers", "consumers", "shared"):
        folders |= {f"{p.parent.relative_to(ROOT)}/" for p in (ROOT / top).glob("*/__init__.py")}
    assert folders <= packages, f"README's layout table lacks {sorted(folders - packages)}"


def test_layout_table_tests_exist_and_pure_modules_are_checked():
    from test_purity import PURE_MODULES

    for row in _layout_rows():
        package = _package(row[1])
        for path in re.findall(r"`([a-z_/*]+\.py)`", row[5]):
            assert list((ROOT / "tests").glob(path)), f"layout: tests/{path} does not exist"
        listed = {f"{package}{name}" for name in re.findall(r"`([a-z_]+\.py)`", row[3])}
        checked = {
            m.replace(".", "/") + ".py"
            for m in PURE_MODULES
            if (m.replace(".", "/") + ".py").rpartition("/")[0] + "/" == package
        }
        assert listed == checked, (
            f"{package}: the pure modules the README lists {sorted(listed)} are not "
            f"the ones tests/unit/test_purity.py checks {sorted(checked)}"
        )
