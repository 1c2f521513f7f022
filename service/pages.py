"""The jinja2 environment of the pages the service renders without Flask (the model card,
the API docs): templates from service/templates/, every value escaped."""

from __future__ import annotations

import jinja2


def environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("service", "templates"),
        autoescape=True,
        trim_blocks=True,
        lstrip_blocks=True,
    )
