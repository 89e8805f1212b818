"""`clearmark config`: every setting, its value and where it came from.

`clearmark config --update-readme README.md` regenerates the README's settings table.
"""

from __future__ import annotations

import json
from pathlib import Path

import click

from clearmark.settings import (
    ENV_FILE_VARIABLE,
    Settings,
    get_settings,
    settings_file,
    settings_table_markdown,
    variable,
)

README_START = "<!-- settings-table:start -->"
README_END = "<!-- settings-table:end -->"
REFRESH_COMMAND = "clearmark config --update-readme README.md"


def readme_with_table(text: str) -> str:
    """`text` (the README) with the settings table between its markers regenerated."""
    start = text.index(README_START) + len(README_START)
    end = text.index(README_END)
    return f"{text[:start]}\n{settings_table_markdown()}{text[end:]}"


def _env_line(name: str, value: str) -> str:
    """`CLEARMARK_NAME=value` as an env file spells it (quoted where needed)."""
    if value and any(c.isspace() or c in "#'\"\\" for c in value):
        value = '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'
    return f"{variable(name)}={value}"


def config_rows(settings: Settings) -> list[dict[str, str]]:
    """One row per setting: variable, value (secrets masked) and source."""
    return [
        {"variable": variable(name), "value": settings.shown(name), "source": settings.source(name)}
        for name in type(settings).model_fields
    ]


def config_text(settings: Settings) -> str:
    """Every setting as an env-file line with its source as a comment."""
    path = settings_file()
    header = (
        f"# settings file: {path} (from {ENV_FILE_VARIABLE})"
        if path
        else f"# settings file: none (set {ENV_FILE_VARIABLE} to read one)"
    )
    lines = [_env_line(name, settings.shown(name)) for name in type(settings).model_fields]
    width = max(len(line) for line in lines) + 2
    sources = [settings.source(name) for name in type(settings).model_fields]
    return "\n".join([header, *(f"{line:<{width}}# {source}" for line, source in zip(lines, sources))])


@click.command("config")
@click.option("--json", "as_json", is_flag=True, help="Print a JSON list of {variable, value, source}.")
@click.option("--markdown", is_flag=True, help="Print the README's settings table (defaults and meanings).")
@click.option(
    "--update-readme",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    metavar="README",
    help="Rewrite the settings table between the markers in README (a README.md).",
)
def config_command(as_json: bool, markdown: bool, update_readme: Path | None) -> None:
    """Show every setting, its value and its source (default, environment, file, override).

    Settings are CLEARMARK_* environment variables; the file named by CLEARMARK_ENV_FILE
    (lines CLEARMARK_NAME=value) fills in what the environment does not set. Passwords in
    URLs are masked. The output is in env-file format, so it can start a settings file.
    A bad value stops every command with one line naming it (exit status 2).
    """
    if update_readme is not None:
        text = update_readme.read_text()
        update_readme.write_text(readme_with_table(text))
        click.echo(f"settings table written to {update_readme}")
        return
    if markdown:
        click.echo(settings_table_markdown(), nl=False)
        return
    settings = get_settings()
    if as_json:
        click.echo(json.dumps(config_rows(settings), indent=2))
        return
    click.echo(config_text(settings))
