"""docs/reference/configuration.md from ``Settings``: each field's name, environment variable,
type and default, its docstring as the description, grouped by the class's
``# -- section --`` comments."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import re
import textwrap
from pathlib import Path
from typing import Any

from service import config
from service.config import ENV_PREFIX, Settings
from service.reference_docs.markdown import anchor, banner, cell, code

_SECTION = re.compile(r"^\s*# -- (.+?) -*$")

_TYPES = {
    "Path": "path",
    "str": "string",
    "int": "integer",
    "float": "number",
    "bool": "boolean",
    "tuple[str, ...]": "list of strings",
}


@dataclasses.dataclass
class Setting:
    name: str
    type: str
    default: str
    description: str

    @property
    def env_var(self) -> str:
        return ENV_PREFIX + self.name.upper()


@dataclasses.dataclass
class Section:
    title: str
    intro: str
    settings: list[Setting]


def sections(settings_class: type = Settings) -> list[Section]:
    """The settings class's fields in the order it declares them, in its sections."""
    source = textwrap.dedent(inspect.getsource(settings_class))
    lines = source.splitlines(keepends=True)
    class_node = ast.parse(source).body[0]
    assert isinstance(class_node, ast.ClassDef)
    fields = {field.name: field for field in dataclasses.fields(settings_class)}
    found: list[Section] = []
    body = class_node.body
    for index, node in enumerate(body):
        if not (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name)):
            continue
        name = node.target.id
        if name not in fields:
            continue
        header = _section_above(lines, node.lineno - 1)
        if not found or header[0] != found[-1].title:
            found.append(Section(title=header[0], intro=header[1], settings=[]))
        following = body[index + 1] if index + 1 < len(body) else None
        docstring = _docstring(following)
        if not docstring:
            raise ValueError(
                f"setting {name} has no description: write it as a docstring under the field "
                f"in {Path(inspect.getsourcefile(settings_class) or config.__file__).name}"
            )
        annotation = ast.unparse(node.annotation)
        found[-1].settings.append(
            Setting(
                name=name,
                type=_TYPES.get(annotation, annotation),
                default=_default_text(fields[name].default),
                description=docstring,
            )
        )
    missing = set(fields) - {s.name for section in found for s in section.settings}
    if missing:
        raise ValueError(f"settings not found in the class body: {sorted(missing)}")
    return found


def _docstring(node: ast.stmt | None) -> str:
    if (
        isinstance(node, ast.Expr)
        and isinstance(node.value, ast.Constant)
        and isinstance(node.value.value, str)
    ):
        return " ".join(inspect.cleandoc(node.value.value).split())
    return ""


def _section_above(lines: list[str], index: int) -> tuple[str, str]:
    """The title of the nearest ``# -- title --`` comment above line ``index`` and the
    comment lines that follow it (the section's introduction)."""
    for number in range(index, -1, -1):
        match = _SECTION.match(lines[number])
        if match:
            intro = []
            for line in lines[number + 1 :]:
                if not line.strip().startswith("#"):
                    break
                intro.append(line.strip().lstrip("#").strip())
            title = match.group(1).strip()
            return title[0].upper() + title[1:], " ".join(intro)
    return "Settings", ""


def _default_text(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, tuple):
        return ",".join(value)
    return str(value)


def _default_cell(setting: Setting) -> str:
    return code(setting.default) if setting.default else "empty"


def render() -> str:
    found = sections()
    config_var = ENV_PREFIX + "CONFIG"
    out = [
        "# Configuration",
        "",
        banner("`Settings` in service/config.py"),
        "",
        "The service and `modelctl` read the same settings. Each has a default; a YAML file "
        f"named by {code(config_var)} overrides the defaults, and an environment variable "
        f"{code(ENV_PREFIX + '<SETTING>')} (the setting's name in upper case) overrides both, "
        "so one host can override a file that several share. An unknown setting, or a value "
        "that does not fit, is refused when the settings are read, naming the setting.",
        "",
        "Values in the environment are text: a list is comma-separated (`predict,read`), "
        "a boolean is `true` or `false`. In the YAML file a list is a YAML list. "
        "For example:",
        "",
        "```yaml",
        "# settings.yaml",
        "models: [iris-classifier]",
        "prediction_log: true",
        "```",
        "",
        "```sh",
        f"{config_var}=settings.yaml {ENV_PREFIX}PREDICTION_LOG_SAMPLE_RATE=0.1 \\",
        "    .venv/bin/modelctl serve",
        "```",
        "",
        "| Setting | Environment variable | Type | Default |",
        "|---|---|---|---|",
    ]
    for section in found:
        for setting in section.settings:
            out.append(
                f"| [{code(setting.name)}](#{anchor(setting.name)}) | {code(setting.env_var)} "
                f"| {setting.type} | {cell(_default_cell(setting))} |"
            )
    for section in found:
        out += ["", f"## {section.title}"]
        if section.intro:
            out += ["", _prose(section.intro)]
        for setting in section.settings:
            out += [
                "",
                f"### {code(setting.name)}",
                "",
                f"{code(setting.env_var)} · {setting.type} · default: {_default_cell(setting)}",
                "",
                _prose(setting.description),
            ]
    return "\n".join(out) + "\n"


def _prose(text: str) -> str:
    # A lone * (e.g. "balancer_*") would open emphasis.
    return text.replace("*", "\\*")
