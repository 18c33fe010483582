"""Every example's README commands run as written (from a scratch folder that sees the examples)."""

from __future__ import annotations

import re

import pytest

from conftest import EXAMPLES, run_shell

READMES = sorted(EXAMPLES.glob("*/README.md"))


def _commands(readme):
    blocks = re.findall(r"```sh\n(.*?)```", readme.read_text(), re.S)
    return [line.strip() for block in blocks for line in block.splitlines()
            if line.strip() and not line.strip().startswith("#")]


@pytest.mark.slow
@pytest.mark.parametrize("readme", READMES, ids=[r.parent.name for r in READMES])
def test_example_readme_commands(readme, tmp_path):
    (tmp_path / "examples").symlink_to(EXAMPLES)
    commands = _commands(readme)
    assert commands, f"{readme} shows no commands"
    for command in commands:
        result = run_shell(command, tmp_path)
        assert result.returncode == 0, f"{command}\n{result.stdout}\n{result.stderr}"
        assert "Traceback" not in result.stderr
