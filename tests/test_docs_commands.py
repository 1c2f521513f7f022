"""Every `modelctl` command line in the docs' shell code blocks names a real command and only
options that command has, so a reader can run it as written.

Checked against the click tree itself (service.cli), not against the reference page. Lines
are read as a shell would read them: ``$ `` prompts, ``\\`` continuations, ``VAR=value``
prefixes, ``&&``, ``|``, ``;`` and ``$(...)``; the body of a heredoc is not a command.
"""

from __future__ import annotations

import re
import shlex
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from service.cli import cli

ROOT = Path(__file__).resolve().parents[1]
SHELL_LANGUAGES = {"", "sh", "bash", "shell", "console", "zsh", "shell-session"}
SEPARATORS = {"&&", "||", "|", ";", "&", "(", ")", ";;", "|&"}
REDIRECTS = {">", ">>", "<", "<<", "<<<", ">&", "<&", ">|"}
ELLIPSES = {"...", "…"}
COMMAND_PREFIXES = {"sudo", "env", "time", "exec", "nohup"}
ASSIGNMENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*=")
# Optional parts in brackets, or alternatives joined by |: a usage line, not a command.
USAGE_NOTATION = re.compile(r"(^|\s)\[-|\w\|\w")
FENCE = re.compile(r"^(\s*)(`{3,}|~{3,})\s*([\w+-]*)")


def doc_files() -> list[Path]:
    return [ROOT / "README.md", *sorted((ROOT / "docs").rglob("*.md"))]


def code_blocks(text: str) -> Iterator[tuple[int, str, list[str]]]:
    """(line number of the first line, language, lines) of each fenced code block."""
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        opening = FENCE.match(lines[index])
        if not opening:
            index += 1
            continue
        fence, language = opening.group(2), opening.group(3).lower()
        start = index + 1
        index = start
        while index < len(lines) and not lines[index].strip().startswith(fence):
            index += 1
        yield start + 1, language, lines[start:index]
        index += 1


def shell_lines(language: str, lines: list[str]) -> Iterator[tuple[int, str]]:
    """(offset, text) of each logical shell line of a block: continuations joined, prompts
    dropped, heredoc bodies skipped; in a console block only the lines after a prompt."""
    console = language in {"console", "shell-session"}
    index = 0
    while index < len(lines):
        first = index
        line = lines[index]
        index += 1
        if console:
            if not line.lstrip().startswith("$"):
                continue
            line = line.lstrip()[1:]
        elif line.lstrip().startswith("$ "):
            line = line.lstrip()[2:]
        while True:
            if line.rstrip().endswith("\\") and index < len(lines):
                line = line.rstrip()[:-1] + " " + lines[index].lstrip().removeprefix("> ")
                index += 1
                continue
            try:
                shlex.split(line, comments=True)
            except ValueError:  # a quote that closes on a later line
                if index < len(lines):
                    line += "\n" + lines[index]
                    index += 1
                    continue
            break
        heredoc = re.search(r"<<-?\s*['\"]?(\w+)['\"]?", line)
        if heredoc:
            while index < len(lines) and lines[index].strip() != heredoc.group(1):
                index += 1
            index += 1
        yield first, line


def modelctl_invocations(line: str) -> Iterator[list[str]]:
    """The arguments of each modelctl in one shell line."""
    lexer = shlex.shlex(line, posix=True, punctuation_chars=True)
    lexer.whitespace_split = True
    lexer.commenters = "#"
    try:
        tokens = list(lexer)
    except ValueError:
        tokens = line.split()
    words: list[str] = []
    for token in [*tokens, ";"]:
        if token in SEPARATORS:
            yield from _invocation(words, line)
            words = []
        else:
            words.append(token)


def _invocation(words: list[str], line: str) -> Iterator[list[str]]:
    while words and (ASSIGNMENT.match(words[0]) or words[0] in COMMAND_PREFIXES):
        words = words[1:]
    if not words or not (words[0] == "modelctl" or words[0].endswith("/modelctl")):
        return
    args: list[str] = []
    skip = False
    for word in words[1:]:
        if skip:
            skip = False
            continue
        if word in REDIRECTS or word.startswith((">", "<")):
            skip = word in REDIRECTS
            if args and args[-1] in {"1", "2", "&"} and f"{args[-1]}{word}" in line:
                args.pop()  # a file descriptor (2>/dev/null), not an argument
            continue
        args.append(word)
    yield args


def problems(args: list[str], *, synopsis: bool = False) -> list[str]:
    """What stops ``modelctl ARGS`` from running as written: an unknown command or option, an
    option without its value, an argument too many or one missing. A ``synopsis`` (a usage
    line in a text block: ``[--alias NAME]``, ``start|stop``) is held only to naming real
    commands and options."""
    command: click.Command = cli
    ctx = click.Context(cli, info_name="modelctl")
    index = 0
    while isinstance(command, click.Group):
        if index == len(args):
            return [] if synopsis else [f"`{ctx.command_path}` names no command"]
        word = args[index]
        index += 1
        if word in ("--help", "-h") or (synopsis and word in ELLIPSES):
            return []
        if word.startswith("-"):
            return [f"`{word}` is not an option of `{ctx.command_path}`"]
        if synopsis and "|" in word:
            return [
                f"`{ctx.command_path}` has no command `{alternative}`"
                for alternative in word.split("|")
                if alternative not in command.commands
            ]
        if word not in command.commands:
            known = ", ".join(sorted(command.commands))
            return [f"`{ctx.command_path}` has no command `{word}` (it has: {known})"]
        command = command.commands[word]
        ctx = click.Context(command, info_name=word, parent=ctx)
    options: dict[str, click.Option] = {}
    for param in command.get_params(ctx):
        if isinstance(param, click.Option):
            for name in (*param.opts, *param.secondary_opts):
                options[name] = param
    found: list[str] = []
    positional: list[str] = []
    given: set[str] = set()
    elided = False
    while index < len(args):
        word = args[index]
        index += 1
        if word in ELLIPSES:
            elided = True
        elif word == "--":
            positional += args[index:]
            break
        elif word.startswith("-") and word != "-" and not _is_number(word):
            name, has_value, _ = word.partition("=")
            option = options.get(name)
            if option is None:
                found.append(f"`{name}` is not an option of `{ctx.command_path}`")
                continue
            given.add(option.name or name)
            takes_value = not (option.is_flag or option.count)
            if takes_value and not has_value:
                values = args[index : index + option.nargs]
                if len(values) < option.nargs or any(
                    value.startswith("--") or (value in ELLIPSES and not synopsis)
                    for value in values
                ):
                    found.append(f"`{name}` of `{ctx.command_path}` needs a value")
                index += option.nargs
            elif has_value and not takes_value:
                found.append(f"`{name}` of `{ctx.command_path}` takes no value")
        else:
            positional.append(word)
    if "help" in given or elided or found or synopsis:
        # After an unknown option, which words were its values is anyone's guess.
        return found
    arguments = [param for param in command.params if isinstance(param, click.Argument)]
    if all(argument.nargs >= 0 for argument in arguments):
        room = sum(argument.nargs for argument in arguments)
        if len(positional) > room:
            extra = " ".join(positional[room:])
            found.append(f"`{ctx.command_path}` takes {room} argument(s); `{extra}` is extra")
    needed = sum(max(a.nargs, 1) for a in arguments if a.required)
    if len(positional) < needed:
        usage = " ".join(command.collect_usage_pieces(ctx))
        found.append(f"`{ctx.command_path}` is missing an argument (usage: {usage})")
    for param in command.params:
        if (
            isinstance(param, click.Option)
            and param.required
            and param.name not in given
            and not param.envvar
        ):
            found.append(f"`{ctx.command_path}` needs `{param.opts[0]}`")
    return found


def _is_number(word: str) -> bool:
    try:
        float(word)
    except ValueError:
        return False
    return True


def synopsis_args(line: str) -> list[str] | None:
    """modelctl's arguments in a usage line, brackets dropped, or None."""
    words = line.replace("[", " ").replace("]", " ").split()
    if not words or not (words[0] == "modelctl" or words[0].endswith("/modelctl")):
        return None
    return [word for word in words[1:] if word != "|"]


def synopses(language: str, lines: list[str]) -> Iterator[tuple[int, str]]:
    """(offset, text) of each usage line of a block, with the indented lines that continue
    it: every modelctl line of a text block, and those of an unlabelled block written in
    usage notation (``[--alias NAME]``, ``start|stop``)."""
    index = 0
    while index < len(lines):
        first, line = index, lines[index].split("#")[0]
        index += 1
        if synopsis_args(line) is None or (language == "" and not USAGE_NOTATION.search(line)):
            continue
        while index < len(lines) and re.match(r"\s+[\[-]", lines[index]):
            line += " " + lines[index].split("#")[0]
            index += 1
        yield first, line


def commands_in(path: Path) -> list[tuple[int, str, list[str], bool]]:
    """(line number, the line as written, modelctl's arguments, whether it is a synopsis) of
    each modelctl line: commands in shell blocks, usage lines in other blocks."""
    found = []
    for first, language, lines in code_blocks(path.read_text(encoding="utf-8")):
        usage = {}
        if language not in SHELL_LANGUAGES or language == "":
            usage = dict(synopses(language, lines))
        for offset, line in usage.items():
            found.append((first + offset, " ".join(line.split()), synopsis_args(line), True))
        if language in SHELL_LANGUAGES:
            for offset, line in shell_lines(language, lines):
                if offset in usage:
                    continue
                for args in modelctl_invocations(line):
                    found.append((first + offset, " ".join(line.split()), args, False))
    return sorted(found, key=lambda entry: entry[0])


@pytest.mark.parametrize("path", doc_files(), ids=lambda path: str(path.relative_to(ROOT)))
def test_modelctl_commands_in_docs_run_as_written(path):
    report = []
    for number, line, args, synopsis in commands_in(path):
        for problem in problems(args, synopsis=synopsis):
            report.append(f"{path.relative_to(ROOT)}:{number}: {problem}\n    {line}")
    assert not report, "modelctl commands that would not run as written:\n" + "\n".join(report)


def test_the_docs_have_modelctl_commands_to_check():
    counted = sum(len(commands_in(path)) for path in doc_files())
    assert counted >= 10, f"only {counted} modelctl commands found: is the parser blind?"


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        (".venv/bin/modelctl promote iris-classifier 2 --alias staging --reason 'better F1'", []),
        ("$ modelctl show iris-classifier@2 --full", []),
        ("MODEL_SERVICE_KEY=abc .venv/bin/modelctl keys list --store=model_store", []),
        ("modelctl experiment start iris-classifier --variants production=90,2=10", []),
        ("modelctl keys create ci --scopes predict 2>/dev/null | tail -1", []),
        ("KEY=$(modelctl hash-key | head -1) && echo $KEY", []),
        ("modelctl canary NAME VERSION ...", []),
        ("modelctl serve --help", []),
        ("modelctl promote iris-classifier 2 --alais staging", ["`--alais` is not an option"]),
        ("modelctl experiments start x", ["has no command `experiments`"]),
        ("modelctl serve --port", ["`--port` of `modelctl serve` needs a value"]),
        ("modelctl rollback iris-classifier 2", ["takes 1 argument(s); `2` is extra"]),
        ("modelctl promote iris-classifier", ["is missing an argument"]),
        ("modelctl keys create ci", ["needs `--scopes`"]),
        (
            "modelctl promote iris-classifier 2 [--alias production]",
            ["`[--alias production]` is extra"],
        ),
        ("modelctl experiment start|status NAME", ["`modelctl experiment start` is missing"]),
        ("modelctl keys", ["`modelctl keys` names no command"]),
    ],
)
def test_problems_of_a_line(line, expected):
    found = [problem for args in modelctl_invocations(line) for problem in problems(args)]
    assert len(found) == len(expected), found
    for problem, fragment in zip(found, expected, strict=True):
        assert fragment in problem


@pytest.mark.parametrize(
    ("line", "expected"),
    [
        ("modelctl promote NAME VERSION [--alias ALIAS] [--force]", []),
        ("modelctl experiment start|status|report|conclude|stop NAME ...", []),
        ("modelctl keys create NAME --scopes S [--expires 2027-01-01|30d]", []),
        ("modelctl promote NAME VERSION [--alais ALIAS]", ["`--alais` is not an option"]),
        ("modelctl experiment start|pause NAME", ["has no command `pause`"]),
    ],
)
def test_problems_of_a_synopsis(line, expected):
    found = problems(synopsis_args(line), synopsis=True)
    assert len(found) == len(expected), found
    for problem, fragment in zip(found, expected, strict=True):
        assert fragment in problem


def test_continuations_prompts_and_heredocs_are_read_as_the_shell_reads_them():
    block = [
        "$ .venv/bin/modelctl serve --port 8080 \\",
        ">     --workers 2",
        "serving on http://127.0.0.1:8080",
        "$ cat > spec.yaml <<'EOF'",
        "modelctl: not a command here",
        "EOF",
    ]
    lines = [line for _, line in shell_lines("console", block)]
    assert len(lines) == 2
    assert list(modelctl_invocations(lines[0])) == [["serve", "--port", "8080", "--workers", "2"]]
    assert list(modelctl_invocations(lines[1])) == []
