"""The ``qpeft`` command dispatcher: version, unknown commands, lazy subcommand
modules and the translation of QpeftError into exit code 2."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from qpeft import cli
from qpeft._version import __version__

COMMAND_SOURCE = '''\
"""{summary}"""

from qpeft.errors import ConfigError


def add_parser(subparsers):
    parser = subparsers.add_parser("{name}", help=__doc__)
    parser.add_argument("--rank", type=int, default=4)
    parser.add_argument("--fail", action="store_true")
    parser.set_defaults(func=run)


def run(args):
    if args.fail:
        raise ConfigError(
            f"rank {{args.rank}} is larger than the layer width; choose a smaller rank"
        )
    print(f"rank={{args.rank}}")
    return {exit_code}
'''


@pytest.fixture
def register_command(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> Iterator[Callable[[str, str], str]]:
    """Write a module to a fresh folder on sys.path and list it in cli.COMMANDS."""
    monkeypatch.syspath_prepend(str(tmp_path))
    written: list[str] = []

    def register(name: str, source: str) -> str:
        module_name = f"qpeft_cli_test_{name.replace('-', '_')}_{uuid.uuid4().hex[:8]}"
        (tmp_path / f"{module_name}.py").write_text(source, encoding="utf-8")
        monkeypatch.setitem(cli.COMMANDS, name, module_name)
        written.append(module_name)
        return module_name

    yield register
    for module_name in written:
        sys.modules.pop(module_name, None)


def fake_command(name: str, summary: str = "Adapt a fake layer.", exit_code: int = 0) -> str:
    return COMMAND_SOURCE.format(name=name, summary=summary, exit_code=exit_code)


def test_version_prints_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        cli.main(["--version"])
    assert stop.value.code == 0
    assert capsys.readouterr().out.strip() == f"qpeft {__version__}"


def test_python_dash_m_qpeft_runs_the_cli() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "qpeft", "--version"],
        capture_output=True,
        text=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"qpeft {__version__}"


def test_unknown_subcommand_exits_non_zero(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        cli.main(["no-such-command"])
    assert stop.value.code != 0
    assert "invalid choice: 'no-such-command'" in capsys.readouterr().err


def test_missing_subcommand_exits_non_zero(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        cli.main([])
    assert stop.value.code != 0
    assert "COMMAND" in capsys.readouterr().err


def test_command_runs_with_its_arguments_and_exit_code(
    register_command: Callable[[str, str], str], capsys: pytest.CaptureFixture[str]
) -> None:
    register_command("adapt", fake_command("adapt", exit_code=3))
    assert cli.main(["adapt", "--rank", "8"]) == 3
    assert capsys.readouterr().out == "rank=8\n"


def test_qpeft_error_becomes_exit_code_2_without_traceback(
    register_command: Callable[[str, str], str], capsys: pytest.CaptureFixture[str]
) -> None:
    register_command("adapt", fake_command("adapt"))
    assert cli.main(["adapt", "--rank", "9000", "--fail"]) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err == (
        "error: rank 9000 is larger than the layer width; choose a smaller rank\n"
    )


def test_qpeft_error_exit_code_through_the_interpreter(
    register_command: Callable[[str, str], str], tmp_path: Path
) -> None:
    module_name = register_command("adapt", fake_command("adapt"))
    program = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(tmp_path)!r})
        from qpeft import cli
        cli.COMMANDS["adapt"] = {module_name!r}
        raise SystemExit(cli.main(["adapt", "--fail"]))
        """
    )
    result = subprocess.run(
        [sys.executable, "-c", program], capture_output=True, text=True, check=False
    )
    assert result.returncode == 2
    assert result.stderr == "error: rank 4 is larger than the layer width; choose a smaller rank\n"
    assert "Traceback" not in result.stderr


def test_other_exceptions_are_not_swallowed(
    register_command: Callable[[str, str], str],
) -> None:
    source = fake_command("adapt").replace("raise ConfigError(", "raise RuntimeError(")
    register_command("adapt", source)
    with pytest.raises(RuntimeError, match="rank 4 is larger"):
        cli.main(["adapt", "--fail"])


def test_help_lists_available_commands_with_their_summary(
    register_command: Callable[[str, str], str], capsys: pytest.CaptureFixture[str]
) -> None:
    register_command("adapt", fake_command("adapt", summary="Adapt a fake layer quickly."))
    with pytest.raises(SystemExit) as stop:
        cli.main(["--help"])
    assert stop.value.code == 0
    out = capsys.readouterr().out
    assert "adapt" in out
    assert "Adapt a fake layer quickly." in out


def test_only_the_chosen_command_module_is_imported(
    register_command: Callable[[str, str], str], capsys: pytest.CaptureFixture[str]
) -> None:
    chosen = register_command("adapt", fake_command("adapt"))
    other = register_command("other", fake_command("other"))
    assert cli.main(["adapt"]) == 0
    assert chosen in sys.modules
    assert other not in sys.modules
    assert capsys.readouterr().out == "rank=4\n"


def test_command_whose_module_does_not_exist_is_not_offered(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(cli.COMMANDS, "ghost", "qpeft_cli_test_no_such_package.ghost")
    monkeypatch.setitem(cli.COMMANDS, "phantom", "qpeft.no_such_module")
    available = cli.available_commands()
    assert "ghost" not in available
    assert "phantom" not in available
    with pytest.raises(SystemExit) as stop:
        cli.main(["ghost"])
    assert stop.value.code != 0
    assert "invalid choice: 'ghost'" in capsys.readouterr().err


def test_import_error_inside_an_existing_module_surfaces(
    register_command: Callable[[str, str], str],
) -> None:
    source = "import qpeft_cli_test_absent_dependency\n\n" + fake_command("broken")
    register_command("broken", source)
    assert "broken" in cli.available_commands()
    with pytest.raises(ModuleNotFoundError) as raised:
        cli.main(["broken"])
    assert raised.value.name == "qpeft_cli_test_absent_dependency"


def test_module_without_add_parser_is_reported(
    register_command: Callable[[str, str], str],
) -> None:
    module_name = register_command("bare", '"""A module that forgot add_parser."""\n')
    with pytest.raises(TypeError, match=f"{module_name} .* no add_parser"):
        cli.main(["bare"])


def test_every_listed_module_that_exists_registers_its_command() -> None:
    for name, module_name in cli.available_commands().items():
        parser = cli.build_parser(name)
        subparsers = next(action for action in parser._actions if action.dest == "command")
        assert name in subparsers.choices, f"{module_name} did not register {name!r}"
        run = subparsers.choices[name].get_default("func")
        assert callable(run), f"{module_name} did not call set_defaults(func=run)"
