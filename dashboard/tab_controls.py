"""Form pieces shared by the Inspect and the Neurons & weights tabs: a whole-number reader for
their inputs and the labelled field, radio and number controls they are laid out with.

>>> whole_number("3", "k", None), whole_number("", "k", 10)
(3, 10)
"""
from __future__ import annotations

import dash_bootstrap_components as dbc
from dash import html


def whole_number(value, what: str, default: int | None) -> int | None:
    """An input's value as an int (`default` when empty); ValueError naming `what` otherwise.

    >>> whole_number(2.5, "pair", 0)
    Traceback (most recent call last):
    ...
    ValueError: pair must be a whole number, not 2.5
    """
    if value is None or (isinstance(value, str) and not value.strip()):
        return default
    try:
        f = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a whole number, not {value!r}") from None
    if not f.is_integer():
        raise ValueError(f"{what} must be a whole number, not {value!r}")
    return int(f)


def field(field_id: str, label: str, control) -> html.Div:
    """A labelled control in a div whose id the tab shows or hides per view."""
    return html.Div([dbc.Label(label, html_for=getattr(control, "id", None), className="field-label"),
                     control], id=field_id, className="inspect-field")


def radio(id_: str, options: dict, value: str) -> dbc.RadioItems:
    """Inline radio items from {value: label}."""
    return dbc.RadioItems(id=id_, value=value, inline=True,
                          options=[{"label": v, "value": k} for k, v in options.items()])


def number(id_: str, value, placeholder: str = "", min_=None) -> dbc.Input:
    """A small whole-number input that reports on blur / Enter (debounced)."""
    return dbc.Input(id=id_, type="number", value=value, step=1, min=min_, size="sm",
                     placeholder=placeholder, debounce=True, className="inspect-number")
