"""Walking a Dash layout in tests: every component of a tree, depth first.

>>> from dash import html
>>> [type(c).__name__ for c in walk(html.Div([html.Span("a"), "text", html.B("b")]))]
['Div', 'Span', 'B']
"""
from __future__ import annotations


def walk(component):
    """`component` and every Dash component below it (plain strings and numbers are skipped)."""
    yield component
    children = getattr(component, "children", None)
    if children is None:
        return
    for child in children if isinstance(children, (list, tuple)) else [children]:
        if hasattr(child, "to_plotly_json"):
            yield from walk(child)
