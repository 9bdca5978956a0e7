"""``agent-supervisor completion bash|zsh|fish``: a shell completion script, written from the
parser itself, so it never lags behind the commands.

Why a printed script and not argcomplete: argcomplete runs Python (our start-up, ~100 ms or
more) on every Tab and needs its own package and a global activation step; a static script
costs nothing per Tab, works offline and in any of the three shells, and is one line to
install (README, "Command line"). What it cannot do is complete job ids; ``list`` is there.
"""

from __future__ import annotations

import argparse
import shlex
from dataclasses import dataclass, field
from typing import Final

__all__ = ["completion_script"]

_PATH_OPTIONS: Final = frozenset({"--data-dir", "--config", "--batch"})


@dataclass
class _Option:
    flags: list[str]
    takes_value: bool
    choices: list[str]
    help: str


@dataclass
class _Command:
    name: str
    help: str
    options: list[_Option] = field(default_factory=list)
    words: list[str] = field(default_factory=list)
    """Positional choices: sub-commands (``db schema``) or fixed values (``completion bash``)."""


def _options(parser: argparse.ArgumentParser) -> tuple[list[_Option], list[str], list[str]]:
    """Options, positional choices and their help texts of one parser level."""
    options, words, helps = [], [], []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for choice in action._choices_actions:
                words.append(choice.dest)
                helps.append(choice.help or "")
        elif action.option_strings:
            if isinstance(action, argparse._HelpAction):
                continue
            options.append(
                _Option(
                    list(action.option_strings),
                    action.nargs != 0,
                    [str(c) for c in action.choices] if action.choices else [],
                    (action.help or "").replace("%%", "%"),
                )
            )
        elif action.choices:
            values = [str(c) for c in action.choices]
            words += values
            helps += [""] * len(values)
    return options, words, helps


def _model(parser: argparse.ArgumentParser) -> tuple[list[_Option], list[_Command]]:
    top, _, _ = _options(parser)
    commands = []
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {c.dest: c.help or "" for c in action._choices_actions}
            for name, sub in action.choices.items():
                options, words, _ = _options(sub)
                commands.append(_Command(name, helps.get(name, ""), options, words))
    return top, commands


def _bash(parser: argparse.ArgumentParser) -> str:
    top, commands = _model(parser)
    names = " ".join(c.name for c in commands)
    valued = [*top, *(o for c in commands for o in c.options)]
    prev_cases = []
    seen: set[str] = set()
    for o in valued:
        if not o.takes_value:
            continue
        for flag in o.flags:
            if flag in seen:
                continue
            seen.add(flag)
            if o.choices:
                prev_cases.append(
                    f'        {flag}) COMPREPLY=($(compgen -W "{" ".join(o.choices)}" -- "$cur")); return;;'
                )
            elif flag in _PATH_OPTIONS:
                prev_cases.append(f'        {flag}) COMPREPLY=($(compgen -f -- "$cur")); return;;')
            else:
                prev_cases.append(f"        {flag}) return;;")
    cmd_cases = []
    for c in commands:
        words = " ".join([*c.words, *(f for o in c.options for f in o.flags)])
        cmd_cases.append(f'        {c.name}) opts="{words}";;')
    top_flags = " ".join(f for o in top for f in o.flags)
    return "\n".join(
        [
            "# agent-supervisor completion for bash (agent-supervisor completion bash)",
            "_agent_supervisor() {",
            '    local cur="${COMP_WORDS[COMP_CWORD]}" prev="${COMP_WORDS[COMP_CWORD-1]}" cmd="" i opts',
            '    case "$prev" in',
            *prev_cases,
            "    esac",
            "    for ((i = 1; i < COMP_CWORD; i++)); do",
            f'        case " {names} " in *" ${{COMP_WORDS[i]}} "*) cmd="${{COMP_WORDS[i]}}"; break;; esac',
            "    done",
            '    case "$cmd" in',
            f'        "") opts="{top_flags} {names}";;',
            *cmd_cases,
            "    esac",
            '    COMPREPLY=($(compgen -W "$opts" -- "$cur"))',
            "}",
            "complete -F _agent_supervisor agent-supervisor",
            "",
        ]
    )


def _fish(parser: argparse.ArgumentParser) -> str:
    top, commands = _model(parser)
    lines = [
        "# agent-supervisor completion for fish (agent-supervisor completion fish)",
        "complete -c agent-supervisor -f",
    ]

    def option(o: _Option, condition: str) -> str:
        parts = ["complete -c agent-supervisor", f"-n {shlex.quote(condition)}"]
        for flag in o.flags:
            parts.append(f"-l {flag[2:]}" if flag.startswith("--") else f"-s {flag[1:]}")
        if o.choices:
            parts.append(f"-xa {shlex.quote(' '.join(o.choices))}")
        elif o.takes_value:
            parts.append("-r" + ("F" if set(o.flags) & _PATH_OPTIONS else ""))
        if o.help:
            parts.append(f"-d {shlex.quote(o.help[:80])}")
        return " ".join(parts)

    for o in top:
        lines.append(option(o, "__fish_use_subcommand"))
    for c in commands:
        lines.append(
            f"complete -c agent-supervisor -n __fish_use_subcommand -a {c.name} -d {shlex.quote(c.help[:80])}"
        )
        condition = f"__fish_seen_subcommand_from {c.name}"
        if c.words:
            words = shlex.quote(" ".join(c.words))
            lines.append(f"complete -c agent-supervisor -n {shlex.quote(condition)} -a {words}")
        lines += [option(o, condition) for o in c.options]
    return "\n".join(lines) + "\n"


def completion_script(shell: str, parser: argparse.ArgumentParser) -> str:
    """The completion script for ``shell`` (bash, zsh or fish). zsh runs the bash one
    through its ``bashcompinit`` layer, which every zsh ships."""
    if shell == "bash":
        return _bash(parser)
    if shell == "zsh":
        return (
            "# agent-supervisor completion for zsh (agent-supervisor completion zsh)\n"
            "autoload -U +X compinit && compinit\nautoload -U +X bashcompinit && bashcompinit\n"
            + _bash(parser).split("\n", 1)[1]
        )
    if shell == "fish":
        return _fish(parser)
    raise ValueError(f"no completion for shell {shell!r}")
