"""CI (``.ci/run``) runs the test command the README gives, and nothing else."""

from __future__ import annotations

import os
import re
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def readme_test_command() -> str:
    """The first command after "Run the whole test suite" in the README's two-commands block."""
    text = (REPO / "README.md").read_text()
    block = text[text.index("# 2. Run the whole test suite") :]
    return next(line.strip() for line in block.splitlines() if line.strip() and not line.startswith("#"))


def test_ci_runs_the_readme_test_command() -> None:
    command = readme_test_command()
    assert command == "bash tests/run.sh"
    ci = REPO / ".ci" / "run"
    assert os.access(ci, os.X_OK)
    code = [line.strip() for line in ci.read_text().splitlines() if line.strip() and not line.startswith("#")]
    runs = [line for line in code if re.fullmatch(rf'(exec )?{re.escape(command)}( "\$@")?', line)]
    assert runs == [code[-1]], code  # the last thing CI does is the README's command
    assert 'cd "$(dirname "${BASH_SOURCE[0]}")/.."' in code  # from the repository root


def test_the_test_command_runs_pytest_over_tests_with_required_services() -> None:
    script = (REPO / "tests" / "run.sh").read_text()
    assert "LLM_GATEWAY_TEST_SERVICES=required" in script
    assert re.search(r"-m pytest", script)
    pyproject = (REPO / "pyproject.toml").read_text()
    assert re.search(r'testpaths\s*=\s*\["tests"\]', pyproject)
