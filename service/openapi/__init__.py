"""The OpenAPI 3.1 document of the HTTP API, and its HTML rendering.

The fixed part (every route with its parameters, bodies and answers, the shared schemas,
the kinds of failure) is data: ``openapi.yaml``, completed by ``document``. What depends on
the served models (for each, typed schemas of one instance and of its prediction, and a
``/v1/models/<name>/predict`` path using them) is built from their metadata by ``models``.
``page`` renders the document as a self-contained HTML page.

Nothing here imports Flask: ``served`` is a list of loaded models (anything with a
``metadata`` attribute) or of metadata dicts, one per model name.
"""

from service.openapi.document import build_document, path_template, statuses
from service.openapi.page import render_html

__all__ = ["build_document", "path_template", "render_html", "statuses"]
