"""`sightwise serve` on the command line: its options are the settings' fields (with the
settings' defaults), and user errors are one line with exit code 2 (#25: a port in use, a
folder that is no bundle)."""

from __future__ import annotations

import dataclasses
import socket

import pytest
import typer
from typer.testing import CliRunner

from sightwise.serve.cli import register
from sightwise.serve.settings import ServeSettings


@pytest.fixture(scope="module")
def cli():
    app = typer.Typer()
    register(app)

    @app.command("noop")
    def noop() -> None:  # two commands, so `serve` is a subcommand as in sightwise.cli
        """Nothing."""

    return app


def _run(cli, *args):
    result = CliRunner().invoke(cli, ["serve", *args])
    return result.exit_code, result.output.strip()


# CLI option -> settings field, where the names differ; and the fields with no option.
RENAMED = {"timeout": "request_timeout_s", "header_timeout": "header_timeout_s",
           "watch_interval": "watch_interval_s", "log": "log_dir", "queue": "queue_dir"}
# Flags that turn a setting that is on by default off (--no-log: log=False).
INVERTED = {"no_log": "log"}
NOT_ON_THE_CLI = {"name", "version", "token_env", "keep_alive_s", "retry_after_s"}


def test_every_option_is_a_setting_with_the_settings_default(cli):
    """The settings record is the one place a knob and its default are spelled: each
    option maps to a field and shows that field's default; a new field needs a decision
    (an option, or a place in NOT_ON_THE_CLI)."""
    command = typer.main.get_command(cli).commands["serve"]
    defaults = {f.name: f.default for f in dataclasses.fields(ServeSettings)}
    options = {}
    for param in command.params:
        if param.name in INVERTED:
            field = INVERTED[param.name]
            assert defaults[field] is True and param.default is False, param.name
            continue
        field = RENAMED.get(param.name, param.name)
        assert field in defaults, f"--{param.name} is not a setting"
        options[field] = param.default
    options["log"] = True
    assert set(defaults) == set(options) | NOT_ON_THE_CLI
    for field, default in options.items():
        want = defaults[field]
        assert default == (None if want == () else want), field


def test_a_port_in_use_is_one_line_and_exit_2_before_the_model_loads(cli, tmp_path):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, text = _run(cli, "--bundle", str(tmp_path), "--port", str(port))
    assert code == 2
    assert text == f"error: port {port} on 127.0.0.1 is already in use (another server?); " \
                   "choose another with --port"


def test_a_folder_that_is_no_bundle_is_one_line_and_exit_2(cli, tmp_path):
    code, text = _run(cli, "--bundle", str(tmp_path), "--port", "0")
    assert code == 2 and text.count("\n") == 0
    assert text.startswith("error: ") and "not a bundle (no bundle.json) nor a run folder" in text
    code, text = _run(cli, "--bundle", str(tmp_path / "nope"), "--port", "0")
    assert code == 2 and text.endswith("no such folder")
    code, text = _run(cli, "--bundle", str(tmp_path), "--max-images", "0")
    assert code == 2 and text == "error: max_images must be at least 1, got 0"
