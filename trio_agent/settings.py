"""Settings tables: a dataclass whose fields are CLI flags and environment variables.

Each field is one setting, declared with :func:`setting`. Its flag is the field name
in kebab case (``max_message_bytes`` -> ``--max-message-bytes``) and its variable
the name in upper case behind ``TRIO_AGENT_`` (or ``env=...`` where the ecosystem
already has a name, like ``OPENAI_BASE_URL``). A flag beats the variable, the
variable beats the default. The server (:class:`~trio_agent.server.ServerConfig`)
and the ``openai`` agent (:class:`~trio_agent.agents.openai.OpenAIConfig`) each
declare their table this way; nothing here knows either.
"""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable, Mapping
from dataclasses import MISSING, Field, field, fields, replace
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

    Settings = TypeVar("Settings", bound=DataclassInstance)


def setting(default: Any, help: str, *, secret: bool = False, **extra: Any) -> Any:
    """A dataclass field that is also a ``--flag`` and a variable, with its help text."""
    # A secret stays out of repr(), and so out of any log line that shows a config.
    return field(default=default, repr=not secret, metadata={"help": help, **extra})


ENV_PREFIX = "TRIO_AGENT_"


_BOOLEANS = {
    **dict.fromkeys(("1", "true", "yes", "on"), True),
    **dict.fromkeys(("0", "false", "no", "off"), False),
}


def _convert(kind: Any, raw: str) -> Any:
    if kind in (bool, "bool"):
        if raw.strip().lower() not in _BOOLEANS:
            raise ValueError(f"{raw!r} is not a boolean (use 1/0, true/false, yes/no, on/off)")
        return _BOOLEANS[raw.strip().lower()]
    if kind in (int, "int"):
        return int(raw)
    if kind in (float, "float"):
        return float(raw)
    return raw


def _parser_for(kind: Any) -> Callable[[str], Any]:
    return lambda raw: _convert(kind, raw)


def _env_name(f: Field[Any]) -> str:
    return str(f.metadata.get("env") or ENV_PREFIX + f.name.upper())


def add_arguments(parser: argparse._ActionsContainer, settings: type[DataclassInstance]) -> None:
    """Add one ``--flag`` per field of the settings dataclass ``settings`` to ``parser``."""
    for f in fields(settings):
        flag = "--" + f.name.replace("_", "-")
        env = _env_name(f)
        default = f.default if f.default is not MISSING else None
        if f.type in (bool, "bool"):
            # --web / --no-web
            parser.add_argument(
                flag,
                dest=f.name,
                default=None,
                action=argparse.BooleanOptionalAction,
                help=f"{f.metadata.get('help', '')} (env {env}=1|0; default {default!r})",
            )
            continue
        if f.metadata.get("repeatable"):
            # --allow-host a --allow-host b,c: the values are joined with commas.
            parser.add_argument(
                flag,
                dest=f.name,
                default=None,
                action="append",
                help=f"{f.metadata.get('help', '')} (env {env}; default {default!r})",
            )
            continue
        parser.add_argument(
            flag,
            dest=f.name,
            default=None,
            type=_parser_for(f.type),
            choices=f.metadata.get("choices"),
            help=f"{f.metadata.get('help', '')} (env {env}; default {default!r})",
        )


def settings_from(
    settings: type[Settings],
    args: argparse.Namespace | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Build ``settings`` from parsed flags, then environment variables, then defaults.

    Raises ``ValueError`` naming the variable or the setting that is not valid.
    """
    environ = os.environ if environ is None else environ
    values: dict[str, Any] = {}
    for f in fields(settings):
        from_flag = getattr(args, f.name, None) if args is not None else None
        if isinstance(from_flag, list):  # a repeatable flag
            values[f.name] = ",".join(from_flag)
        elif from_flag is not None:
            values[f.name] = from_flag
        elif (raw := environ.get(_env_name(f))) is not None:
            try:
                values[f.name] = _convert(f.type, raw)
            except ValueError:
                raise ValueError(f"{_env_name(f)}={raw!r} is not valid") from None
    return replace(settings(), **values)
