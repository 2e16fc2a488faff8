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
