"""`moesim completion` (moesim/cli_completion.py): generated from the parser, so every command and
option is in it, and bash completes with it."""

import shutil
import subprocess

import pytest

from moesim.cli import build_parser, main
from moesim.cli_completion import bash_script, commands


def test_every_command_and_option_is_in_the_script():
    parser = build_parser()
    script = bash_script(parser)
    tree = commands(parser)
    assert {"simulate", "sweep", "recommend", "trace", "config", "completion"} <= set(tree)
    assert "stats" in tree["trace"][1] and "show" in tree["config"][1]
    for name, (opts, subs) in tree.items():
        assert name in script
        for option in opts + [o for sub in subs.values() for o in sub]:
            assert option in script, (name, option)


@pytest.mark.skipif(shutil.which("bash") is None, reason="needs bash")
def test_bash_completes_commands_sub_commands_and_options(tmp_path, capsys):
    assert main(["completion", "bash"]) == 0
    (tmp_path / "c.sh").write_text(capsys.readouterr().out)

    def complete(*words: str) -> list[str]:
        line = " ".join(f"'{w}'" for w in words)
        out = subprocess.run(["bash", "-c", f"source {tmp_path / 'c.sh'}; COMP_WORDS=({line}); "
                              f"COMP_CWORD={len(words) - 1}; _moesim; echo \"${{COMPREPLY[@]}}\""],
                             capture_output=True, text=True, check=True).stdout.split()
        return out

    assert complete("moesim", "recom") == ["recommend"]
    assert "--workers" in complete("moesim", "sweep", "s.yaml", "--w")
    assert complete("moesim", "trace", "co") == ["convert"]
    assert "--out" in complete("moesim", "trace", "stats", "t.parquet", "--o")
