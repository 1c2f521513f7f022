"""The model card: one version's metadata.yaml as a self-contained HTML page.

``render_card(metadata, aliases=...)`` builds the view (``service.card.view``: plain values,
no plotting), draws the plots into inline SVG (``service.card.plots``, the only module that
imports matplotlib, imported here only when a card is drawn) and renders the page with
autoescaping. The page loads nothing from anywhere: inline CSS and inline SVG only.

Without matplotlib (an install without the ``training`` extra) the card still renders: each
plot says why it is missing instead.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from service.card.view import card_view, render_page

__all__ = ["card_view", "render_card"]

NO_MATPLOTLIB = "not drawn: matplotlib is not installed (it comes with the training extra)"


def render_card(metadata: dict[str, Any], *, aliases: dict[str, int] | None = None) -> str:
    """The complete HTML page documenting one model version."""
    if not isinstance(metadata, Mapping):
        raise TypeError("metadata must be a mapping")
    view = card_view(metadata, aliases=aliases)
    try:
        from service.card import plots
    except ModuleNotFoundError as exc:
        if exc.name is None or exc.name.partition(".")[0] != "matplotlib":
            raise
        view["plots"] = [_not_drawn("plots", "Plots")]
        for feature in view["features"]:
            feature["plot"] = _not_drawn("feature", "Training distribution")
    else:
        drawn, feature_plots = plots.draw_plots(metadata)
        view["plots"] = drawn
        for feature, plot in zip(view["features"], feature_plots, strict=True):
            feature["plot"] = plot
    return render_page(view)


def _not_drawn(plot_id: str, title: str) -> dict[str, Any]:
    return {"id": plot_id, "title": title, "svg": None, "caption": None, "note": NO_MATPLOTLIB}
