"""Pure functions from results to plotly figures, one module per view family: `common` (layout,
empty figure, graph config), `results` (heatmaps, bars, compare, attention), `lens`, `neurons`,
`circuit`, `agreement` (exact vs attribution). The common and results figures are re-exported here.

>>> from patching import figures
>>> figures.empty_figure("nothing yet").layout.annotations[0].text
'nothing yet'
"""
from __future__ import annotations

from patching.figures.common import (DIVERGING, FONT, MODES, SEQUENTIAL, base_layout, empty_figure,  # noqa: F401
                                      graph_config, position_label)
from patching.figures.results import (Grid, attention_diff, attribution_title, bars, cell_outline, compare,  # noqa: F401
                                       grid, heatmap, heatmap_trace, path_title, result_figure, same_layout)
