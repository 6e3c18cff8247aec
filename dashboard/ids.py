"""Every component id of the dashboard, in one place.

The first block is the contract of DESIGN.md ("Dashboard (contract ids)"): other tools and the
end-to-end tests drive the page by these names, so they never change. The rest are internal.

>>> RESULTS_HEATMAP
'results-heatmap'
"""
from __future__ import annotations

# -- contract ids (DESIGN.md) ------------------------------------------------------------------
MODEL_SELECT = "model-select"
CLEAN_PROMPT = "clean-prompt"
CORRUPT_PROMPT = "corrupt-prompt"
ANSWER_TOKEN = "answer-token"
WRONG_TOKEN = "wrong-token"
PRESET_SELECT = "preset-select"
PAIRS_UPLOAD = "pairs-upload"
KIND_SELECT = "kind-select"
METRIC_SELECT = "metric-select"
DIRECTION_SELECT = "direction-select"
RUN_BUTTON = "run-button"
CANCEL_BUTTON = "cancel-button"
PROGRESS = "progress"
ERROR_MESSAGE = "error-message"
RESULTS_HEATMAP = "results-heatmap"
ATTENTION_DIFF = "attention-diff"
RUN_HISTORY = "run-history"
COMPARE_SELECT = "compare-select"
COMPARE_HEATMAP = "compare-heatmap"
DOWNLOAD_CSV_BUTTON = "download-csv-button"

CONTRACT = (MODEL_SELECT, CLEAN_PROMPT, CORRUPT_PROMPT, ANSWER_TOKEN, WRONG_TOKEN, PRESET_SELECT,
            PAIRS_UPLOAD, KIND_SELECT, METRIC_SELECT, DIRECTION_SELECT, RUN_BUTTON, CANCEL_BUTTON,
            PROGRESS, ERROR_MESSAGE, RESULTS_HEATMAP, ATTENTION_DIFF, RUN_HISTORY, COMPARE_SELECT,
            COMPARE_HEATMAP, DOWNLOAD_CSV_BUTTON)

# -- prompts panel -------------------------------------------------------------------------------
MODEL_STATUS = "model-status"              # loaded model's shape, or why it cannot load
PRESET_COUNT = "preset-count"              # how many pairs a preset draws
PREPEND_BOS = "prepend-bos"                # checklist: prepend BOS (on by default)
PAIRS_STORE = "pairs-store"                # uploaded / preset pairs (list of dicts; text only)
PAIRS_PREVIEW = "pairs-preview"            # the uploaded pairs as a table
PAIRS_CLEAR = "pairs-clear"                # button: forget uploaded pairs
TOKEN_VIEW = "token-view"                  # live clean/corrupt token view

# -- run panel -------------------------------------------------------------------------------
PER_POSITION = "per-position"              # checklist: head kinds per position
LAYERS_FILTER = "layers-filter"
POSITIONS_FILTER = "positions-filter"
HEADS_FILTER = "heads-filter"
BASELINES = "baselines"                    # clean / corrupt baseline values
PROGRESS_TEXT = "progress-text"            # "12 / 40 patches", "queued behind another run"
RUN_STATUS = "run-status"                  # "done in 1.2 s", "queued", ...

# -- results -------------------------------------------------------------------------------
TABS = "main-tabs"
TAB_RESULTS = "tab-results"
TAB_HISTORY = "tab-history"
TAB_PATH = "tab-path"
TAB_ATTRIBUTION = "tab-attribution"
CURRENT_RUN = "current-run"                # dcc.Store: id of the run on screen
VALUE_MODE = "value-mode"                  # raw / normalized toggle
IMAGE_FORMAT = "image-format"              # png / svg for the modebar camera button
RESULTS_SUMMARY = "results-summary"
DOWNLOAD_CSV = "download-csv"              # dcc.Download of the run's CSV
ATTENTION_STATUS = "attention-status"
ATTENTION_DOWNLOAD_BUTTON = "attention-download-button"
ATTENTION_DOWNLOAD = "attention-download"
ATTENTION_CELL = "attention-cell"          # dcc.Store: the clicked (layer, pos, head) and pair
ATTENTION_PAIR = "attention-pair"          # which prompt pair the attention panel shows

# -- history & compare ---------------------------------------------------------------------
HISTORY_VERSION = "history-version"        # dcc.Store bumped when runs are saved or deleted
HISTORY_OPEN = "history-open"              # pattern-matching type: {"type": HISTORY_OPEN, "run": id}
HISTORY_DELETE = "history-delete"
COMPARE_TABLE = "compare-table"
COMPARE_STATUS = "compare-status"
COMPARE_DOWNLOAD_BUTTON = "compare-download-button"
COMPARE_DOWNLOAD = "compare-download"

# -- slots for panels that land later ------------------------------------------------------
PATH_PANEL = "path-panel"
ATTRIBUTION_PANEL = "attribution-panel"
