"""The README and docs are a user's first commands: every config they name exists, every
``clf-train`` command in the README composes and validates, and no page points outside the
repository."""

from __future__ import annotations

import re
import shlex

import pytest

from cl_framework.run_config import validate_run_config
from tests.conftest import ROOT, compose_config

PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
GROUPS = ("experiment", "scenario", "backbone", "trainer", "strategy", "logger", "hparams_search")
CHOICE = re.compile(r"(?<![\w.+/-])(" + "|".join(GROUPS) + r")=(\[[^\]\s]*\]|[\w./{},-]+)")


def expand_braces(name: str) -> list[str]:
    """``erace{,-sam}-500`` -> ``erace-500``, ``erace-sam-500`` (shell brace expansion)."""
    match = re.search(r"\{([^{}]*)\}", name)
    if not match:
        return [name]
    head, tail = name[: match.start()], name[match.end() :]
    return [n for alt in match.group(1).split(",") for n in expand_braces(head + alt + tail)]


def named_choices() -> list[tuple[str, str, str]]:
    found = []
    for page in PAGES:
        for group, value in CHOICE.findall(page.read_text()):
            names = [value] if "{" in value else value.strip("[]").split(",")
            for name in (n for v in names for n in expand_braces(v)):
                name = name.strip().rstrip(".,")
                if name and not name.endswith(("/", "...", "-")) and "<" not in name:
                    found.append((page.name, group, name))
    return sorted(set(found))


@pytest.mark.parametrize(("page", "group", "name"), named_choices())
def test_every_config_named_in_the_docs_exists(page, group, name):
    if group in {"strategy", "logger"} and name in {"...", "nosuch"}:
        pytest.skip("placeholder")
    roots = [ROOT / "conf", *sorted(ROOT.glob("examples/*/conf"))]  # examples bring their own
    paths = [root / group / f"{name}.yaml" for root in roots]
    assert any(p.is_file() for p in paths), f"{page} names {group}={name}: no conf/{group}/{name}"


def readme_commands() -> list[list[str]]:
    text = (ROOT / "README.md").read_text()
    commands = []
    for line in text.splitlines():
        line = line.split("#", 1)[0].strip()
        if line.startswith(".venv/bin/clf-train "):
            args = shlex.split(line)[1:]
            # a sweep (-m a,b) runs each combination: check the first one
            args = [a for a in args if a != "-m"]
            commands.append([a.split(",")[0] if "=" in a and "[" not in a else a for a in args])
    return commands


@pytest.mark.parametrize("overrides", readme_commands(), ids=" ".join)
def test_readme_commands_compose_and_validate(overrides):
    validate_run_config(compose_config(overrides))


def test_readme_shows_how_to_point_at_the_data():
    assert "export CLF_DATA_DIR=" in (ROOT / "README.md").read_text()


def test_docs_do_not_point_outside_the_repository():
    for page in sorted((ROOT / "docs").glob("*.md")):
        text = page.read_text()
        assert "../shared" not in text and "/work/" not in text, page.name
