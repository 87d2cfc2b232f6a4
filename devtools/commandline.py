"""The dev tools' settings models double as their command lines (pydantic-settings)."""

from __future__ import annotations

import sys
from typing import Any, TypeVar

from pydantic import ValidationError
from pydantic_settings import BaseSettings, CliApp, PydanticBaseSettingsSource, SettingsConfigDict

Command = TypeVar("Command", bound="CommandLineSettings")


class CommandLineSettings(BaseSettings):
    """Settings from keyword arguments or, through `parse`, from flags: `start_delay` is
    `--start-delay`, a bool that defaults to False is a bare `--flag`. No environment
    variable changes them: a test's emulator is what the test wrote."""

    model_config = SettingsConfigDict(
        frozen=True,
        extra="forbid",
        populate_by_name=True,  # Python uses field names where the flag is an alias
        cli_kebab_case=True,
        cli_implicit_flags="toggle",
        cli_hide_none_type=True,
    )

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        *other_sources: PydanticBaseSettingsSource, **named_sources: Any,
    ) -> tuple[PydanticBaseSettingsSource, ...]:  # fmt: skip
        return (init_settings,)  # CliApp adds the command line in front


def parse(command: type[Command], argv: list[str] | None) -> Command:
    """The settings from `argv` (default: sys.argv); bad values exit 2 naming each flag."""
    try:
        return CliApp.run(command, cli_args=argv)
    except ValidationError as exc:
        problems = "; ".join(
            f"--{'.'.join(map(str, e['loc'])).replace('_', '-')}: {e['msg']}"
            if e["loc"]
            else e["msg"].removeprefix("Value error, ")
            for e in exc.errors()
        )
        prog = command.model_config.get("cli_prog_name") or sys.argv[0]
        print(f"{prog}: error: {problems}", file=sys.stderr)
        raise SystemExit(2) from None
