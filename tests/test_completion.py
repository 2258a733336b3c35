"""Shell completion: Typer's --show-completion / --install-completion, and completing in a real process."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

# Typer detects the user's shell; with this set, the options take the shell's name instead.
NO_DETECTION = {"_TYPER_COMPLETE_TEST_DISABLE_SHELL_DETECTION": "1"}


def dream(*args, env=None):
    return subprocess.run(
        [sys.executable, "-m", "dreamcli", *args], capture_output=True, text=True, timeout=120,
        env={**os.environ, **NO_DETECTION, **(env or {})},
    )


@pytest.mark.parametrize("shell, fragment", [
    ("bash", "complete -o default -F _dream_completion dream"),
    ("zsh", "compdef _dream_completion dream"),
    ("fish", "complete --command dream"),
])
def test_show_completion_prints_the_script_for_dream(shell, fragment):
    result = dream("--show-completion", shell)
    assert result.returncode == 0, result.stderr
    assert fragment in result.stdout
    assert f"_DREAM_COMPLETE=complete_{shell}" in result.stdout


def test_help_lists_the_completion_options(cli):
    result = cli("--help")
    assert result.exit_code == 0
    assert "--install-completion" in result.stdout and "--show-completion" in result.stdout


def test_the_bash_script_completes_commands_and_options():
    """What bash runs on Tab: `dream ou<Tab>` and `dream outpaint --ri<Tab>`."""
    def complete(words, cword):
        env = {"_DREAM_COMPLETE": "complete_bash", "COMP_WORDS": words, "COMP_CWORD": str(cword)}
        result = dream(env=env)
        assert result.returncode == 0, result.stderr
        return result.stdout.split()

    assert complete("dream ou", 1) == ["outpaint"]
    assert "gen" in complete("dream ", 1) and "upscale" in complete("dream ", 1)
    assert complete("dream outpaint --ri", 2) == ["--right"]


def test_install_completion_writes_the_script_and_sources_it(tmp_path):
    result = dream("--install-completion", "bash", env={"HOME": str(tmp_path)})
    assert result.returncode == 0, result.stderr
    script = tmp_path / ".bash_completions" / "dream.sh"
    assert "_dream_completion" in script.read_text()
    assert str(script.relative_to(tmp_path)) in (tmp_path / ".bashrc").read_text()
