"""The CLI answers --help for every command, and turns user errors into one line + exit 2."""

import pytest

from slidemap.cli import main

COMMANDS = [[], ["synth"], ["prepare"], ["sample"], ["train"], ["predict"], ["evaluate"], ["demo"],
            ["l4s"], ["l4s", "import"]]


@pytest.mark.parametrize("cmd", COMMANDS, ids=lambda c: " ".join(c) or "root")
def test_help(cmd, capsys):
    assert main([*cmd, "--help"]) == 0
    assert "Usage" in capsys.readouterr().out


def test_usage_error_exits_2(capsys):
    assert main(["prepare"]) == 2
