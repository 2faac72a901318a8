"""The CLI's shape: every command in --help, run.toml's schema from the commands'
declared options, library bugs with their traceback, bad input as one line."""

import pytest

from sae_hooks import cli
from sae_hooks.cli import COMMANDS, build_parser, main, run_schema
from sae_hooks.cli.options import Option
from sae_hooks.store.lock import StoreLockedError

ALL = ["capture", "train", "eval", "ablate", "circuit", "export", "inspect", "report", "sweep"]


def test_help_lists_every_command(capsys):
    with pytest.raises(SystemExit):
        main(["--help"])
    out = capsys.readouterr().out
    assert [c.NAME for c in COMMANDS] == [*ALL, "bench-synthetic"]
    for name in (*ALL, "bench-synthetic"):
        assert f"\n    {name} " in out or f"\n    {name}\n" in out, name


def test_each_command_registers_its_own_parser():
    parser = build_parser()
    for command in COMMANDS:
        positional = [o for o in command.options() if o.positional]
        argv = [command.NAME] + ["x"] * len(positional)
        args = parser.parse_args(argv)
        assert args.handler is command.run
        assert set(args.defaults) == {o.dest for o in command.options()}


def test_the_run_toml_schema_comes_from_the_commands():
    schema = run_schema()
    tables = [c.TABLE for c in COMMANDS if c.TABLE]
    assert list(schema.commands) == tables == ALL[:-1]  # sweep reads its own file
    assert schema.tables == ("model", "data", *tables, "sweep")
    assert schema.commands["eval"]["max_batches"].kind is int
    assert schema.commands["capture"]["point"].kind == str | list[str]
    assert schema.commands["capture"]["overwrite"].kind is bool
    assert schema.commands["capture"]["family"].group == "model"
    assert schema.commands["ablate"]["context_length"].group is None  # not under [data]
    assert "config" not in schema.commands["train"] and "path" not in schema.commands["inspect"]


def test_a_new_option_is_a_run_toml_key(monkeypatch, tmp_path, capsys):
    declared = cli.inspect.options
    extra = Option(("--shade",), "a test-only option", type=int)
    monkeypatch.setattr(cli.inspect, "options", lambda: (*declared(), extra))
    assert run_schema().commands["inspect"]["shade"].kind is int
    toml = tmp_path / "run.toml"
    toml.write_text("[inspect]\nshade = 'dark'\n")
    assert main(["inspect", "--config", str(toml)]) == 2
    assert "[inspect] shade: expected int, got 'dark'" in capsys.readouterr().err


def test_a_library_bug_keeps_its_traceback(monkeypatch):
    def bug(path):
        raise TypeError("unsupported operand")

    monkeypatch.setattr(cli.inspect, "describe", bug)
    with pytest.raises(TypeError, match="unsupported operand"):
        main(["inspect", "somewhere"])


@pytest.mark.parametrize(
    "error",
    [
        ValueError("a bad value"),
        FileNotFoundError("no such file"),
        StoreLockedError("held by pid 1"),
        ImportError("pip install extra"),
    ],
)
def test_bad_input_is_one_line(monkeypatch, capsys, error):
    def refuse(path):
        raise error

    monkeypatch.setattr(cli.inspect, "describe", refuse)
    assert main(["inspect", "somewhere"]) == 2
    err = capsys.readouterr().err
    assert err == f"sae-hooks inspect: error: {error}\n"


@pytest.mark.parametrize(
    ("name", "message"),
    [("store", "reserved entry"), ("report", "reserved entry"), ("../up", "plain directory")],
)
def test_a_bad_sae_name_is_refused(tmp_path, monkeypatch, capsys, name, message):
    monkeypatch.setenv("SAE_HOOKS_CACHE", str(tmp_path))
    assert main(["train", "--run", "r", "--name", name, "--steps", "5"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("sae-hooks train: error: ") and message in err
    assert not any(tmp_path.iterdir())
