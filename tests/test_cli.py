"""The `masklam` command line: every command's --help documents every option; bad input is one line, exit 2."""
from __future__ import annotations

import re

import pytest

from masklam import cli
from masklam.args import UsageError, parse
from masklam.quickstart import QuickstartConfig

_DEFAULT = re.compile(r"\((default|required|fixed to)\b.*\)\s*$|\(required\)\s*$")


def help_text(capsys, monkeypatch, command: str) -> str:
    """`masklam COMMAND --help`'s output, on a wide terminal (one option per line where it fits)."""
    monkeypatch.setenv("COLUMNS", "250")
    with pytest.raises(SystemExit) as exit_:
        cli.main([command, "--help"])
    assert exit_.value.code in (0, None), f"masklam {command} --help exited {exit_.value.code}"
    return capsys.readouterr().out


def undocumented(text: str) -> list[str]:
    """Options (and positional arguments) in a tyro help screen whose help is empty but for its default."""
    entries: list[list[str]] = []
    for raw in text.splitlines():  # boxed (a terminal) or plain (a pipe): entries indented 1-2, help deeper
        line = raw.replace("│", " ").rstrip()
        indent = len(line) - len(line.lstrip())
        if not line.strip() or set(line.strip()) <= set("─-╭╮╰╯ "):
            continue
        if indent in (1, 2) and re.match(r"^(-|\{|[A-Z][A-Z_]*\b)", line.lstrip()):
            entries.append([line.strip()])
        elif entries and indent > 2:
            entries[-1].append(line.strip())
    missing = []
    for lines in entries:
        first = re.split(r"\s{2,}", lines[0], maxsplit=1)
        invocation, rest = first[0], (first[1:] or [""])[0]
        body = " ".join([rest, *lines[1:]]).strip()
        if invocation.startswith("-h, --help"):
            continue
        if not _DEFAULT.sub("", body).strip():
            missing.append(invocation)
    return missing


@pytest.mark.parametrize("command", list(cli.COMMANDS))
def test_every_option_has_help(command, capsys, monkeypatch):
    text = help_text(capsys, monkeypatch, command)
    assert "usage:" in text and "--help" in text
    assert undocumented(text) == [], f"masklam {command}: options without help text"


def test_undocumented_detects_an_option_without_help():
    text = ("╭─ options ─╮\n│ -h, --help   show this help message and exit │\n"
            "│ --seed INT   (default: 0) │\n│ --lr FLOAT   learning rate (default: 0.1) │\n"
            "│ --data [PATH [PATH ...]]        │\n│              (required) │\n╰──╯\n")
    assert undocumented(text) == ["--seed INT", "--data [PATH [PATH ...]]"]


def test_invalid_choice_is_one_line_naming_the_option_and_choices(capsys):
    assert cli.main(["quickstart", "--preset", "nope"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("masklam: error: ")
    assert "--preset" in err and "'nope'" in err and "cpu, gpu, toy" in err


def test_unknown_flag_is_one_line_with_a_suggestion(capsys):
    assert cli.main(["quickstart", "--presett", "cpu"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("masklam: error: ")
    assert "--presett" in err and "did you mean --preset?" in err
    assert cli.main(["experiment", "--lis"]) == 2  # a flag tyro renames (list_configs -> --list) is suggested so
    assert "did you mean --list?" in capsys.readouterr().err
    assert cli.main(["info", "--files"]) == 2  # the positional `files` is no flag to suggest
    assert "did you mean" not in capsys.readouterr().err


@pytest.mark.parametrize("argv, words", [
    (["collect", "--task", "cheetah-run"], ["missing required option", "--out"]),
    (["collect", "--task", "cheetah-run", "--out", "x.h5", "--episodes", "many"], ["--episodes", "invalid value"]),
    (["collect", "--task", "cheetah-run", "--out", "x.h5", "surplus"], ["unexpected argument", "surplus"]),
    (["weights", "fetch", "nope"], ["invalid choice", "mobilesam"]),
    (["pretrain", "--method", "masklam", "--data", "x.h5", "--out", "o", "--mask-channel"],
     ["--mask-channel: bad or missing value", "(takes {None,True,False})"]),  # a flag that takes a value
    (["export", "--data", "x.h5", "--out", "o"], ["missing PATH (given without a flag"]),  # a positional one
])
def test_other_parse_errors_are_one_line(argv, words, capsys):
    assert cli.main(argv) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("masklam: error: ")
    assert all(w in err for w in words), err


def test_parse_returns_the_config_and_raises_usage_errors():
    assert parse(QuickstartConfig, ["--preset", "toy"]).preset == "toy"
    with pytest.raises(UsageError, match="--seeds"):
        parse(QuickstartConfig, ["--seeds", "x"])


def test_output_piped_into_a_reader_that_stops_early_is_not_a_traceback(tmp_path, monkeypatch, capfd):
    import io
    import os
    import sys

    from masklam import cli

    class ClosedPipe(io.StringIO):  # what stdout is after `| head` has exited
        def write(self, text: str) -> int:
            raise BrokenPipeError(32, "Broken pipe")

        def fileno(self) -> int:
            return fd

    fd = os.dup(1)
    monkeypatch.setattr(sys, "stdout", ClosedPipe())
    try:
        code = cli.main(["pretrain", "--method", "masklam", "--data", str(tmp_path / "d.h5"), "--out",
                         str(tmp_path / "o"), "--recipe", "authors", "--print-config"])
    finally:
        os.close(fd)
    assert code == 0 and "Traceback" not in capfd.readouterr().err


def test_a_path_no_check_named_is_one_line_not_a_traceback(tmp_path, capsys, monkeypatch):
    """The CLI's last resort for an OSError of a path (an output inside a file): one line naming it, exit 2."""
    from masklam.envs import demo

    (tmp_path / "x.h5").write_text("a file")

    import numpy as np

    monkeypatch.setattr(demo, "render_row", lambda task, preset, cfg: [np.zeros((8, 8, 3), np.uint8)] * 3)
    assert cli.main(["demo", "--out", str(tmp_path / "x.h5" / "sub.png"), "--tasks", "cheetah-run", "--presets",
                     "none", "--steps", "0"]) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith("masklam: error: ") and f"{tmp_path / 'x.h5'} is a file, where a folder is needed" in err
    for error, hint in ((NotADirectoryError(20, "Not a directory", "/o/x.h5/a"), "a part of the path is a file"),
                        (IsADirectoryError(21, "Is a directory", "/o/d"), "a folder is where a file is needed")):
        def fail(argv, error=error):  # an OSError that no check of the command named
            raise error

        monkeypatch.setattr(demo, "main", fail)
        assert cli.main(["demo"]) == 2
        assert capsys.readouterr().err.strip() == f"masklam: error: {error.filename}: {error.strerror} ({hint})"


def test_demo_checks_its_seed_tasks_and_presets_before_rendering():
    from masklam.envs.demo import DemoConfig
    from masklam.errors import MasklamError

    for kw, said in ((dict(seed=-5), "seed must lie in"), (dict(tasks=("cheetah-rnu",)), "cheetah-rnu"),
                     (dict(presets=("foo",)), "unknown distractor preset 'foo'"), (dict(img_size=7), "img_size=7"),
                     (dict(video_split="foo"), "unknown video_split 'foo'"),
                     (dict(presets=("none",), background_path="/no/such/folder"), "no background videos")):
        with pytest.raises(MasklamError, match=said):
            DemoConfig(**kw)
