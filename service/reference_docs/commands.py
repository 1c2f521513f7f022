"""docs/reference/modelctl.md from the click command tree: every group and command under
``modelctl``, its usage, help and options, as ``--help`` prints them."""

from __future__ import annotations

from collections.abc import Iterator

import click

from service.reference_docs.markdown import anchor, banner, cell, code


def walk(
    command: click.Command, ctx: click.Context
) -> Iterator[tuple[click.Command, click.Context]]:
    """``command`` and every command under it, depth first, subcommands by name."""
    yield command, ctx
    if isinstance(command, click.Group):
        for name in sorted(command.commands):
            sub = command.commands[name]
            if sub.hidden:
                continue
            yield from walk(sub, click.Context(sub, info_name=name, parent=ctx))


def root_context() -> click.Context:
    from service.cli import cli

    return click.Context(cli, info_name="modelctl")


def render() -> str:
    root = root_context()
    commands = list(walk(root.command, root))
    out = [
        "# `modelctl`",
        "",
        banner("the click commands of service/cli.py"),
        "",
        _help(root.command),
        "",
        "Every command takes `-h` / `--help`, which prints what this page shows for it, and "
        "exits non-zero with a one-line reason when it fails. Installed with pip, the "
        "command is `modelctl`; in this repository after `make install` it is "
        "`.venv/bin/modelctl`.",
        "",
        "| Command | What it does |",
        "|---|---|",
    ]
    for command, ctx in commands[1:]:
        heading = ctx.command_path
        summary = command.short_help or _help(command).split("\n\n")[0]
        out.append(f"| [{code(heading)}](#{anchor(heading)}) | {cell(summary)} |")
    for command, ctx in commands[1:]:
        out += _section(command, ctx)
    return "\n".join(out) + "\n"


def _section(command: click.Command, ctx: click.Context) -> list[str]:
    usage = " ".join([ctx.command_path, *command.collect_usage_pieces(ctx)])
    out = ["", f"## {code(ctx.command_path)}", "", "```text", f"Usage: {usage}", "```"]
    if command.help:
        out += ["", _help(command)]
    if isinstance(command, click.Group):
        names = ", ".join(
            f"[{code(name)}](#{anchor(f'{ctx.command_path} {name}')})"
            for name in sorted(command.commands)
            if not command.commands[name].hidden
        )
        out += ["", f"Commands: {names}."]
    rows = []
    help_option = command.get_help_option(ctx)
    for param in command.get_params(ctx):
        if not isinstance(param, click.Option) or param is help_option or param.hidden:
            continue
        record = param.get_help_record(ctx)
        if record is None:
            continue
        names, text = record
        text = " ".join(text.split())
        if param.envvar and isinstance(param.envvar, str):
            # As click prints it with show_envvar.
            text = f"{text} [env var: {param.envvar}]".strip()
        rows.append(f"| {cell(code(names))} | {cell(text)} |")
    if rows:
        out += ["", "| Option | Description |", "|---|---|", *rows]
    return out


def _help(command: click.Command) -> str:
    """The command's help as click prints it, paragraphs kept; what follows ``\\f`` is for
    code readers only."""
    text = (command.help or "").split("\f")[0]
    paragraphs = [" ".join(block.split()) for block in text.strip().split("\n\n")]
    return "\n\n".join(p.replace("*", "\\*") for p in paragraphs if p)
