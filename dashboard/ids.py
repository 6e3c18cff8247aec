"""Every component id of the dashboard, in one place (the tabs import theirs from here).

The first block is the contract of DESIGN.md ("Dashboard (contract ids)"): other tools and the
end-to-end tests drive the page by these names, so they never change. The rest are internal;
the view tabs' selector boxes are named by `control_id` and their bodies by `view_ids`.

>>> RESULTS_HEATMAP
'results-heatmap'
"""
from __future__ import annotations

from typing import NamedTuple

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
SESSION_ID = "session-id"                  # dcc.Store: this page's random id; names its jobs for Cancel
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
METRIC_NOTE = "metric-note"                # under the metric select: the metric a chosen preset's task suggests
PROGRESS_TEXT = "progress-text"            # "12 / 40 patched forwards · ≈ 3 s left", "queued behind job 3 …"
RUN_STATUS = "run-status"                  # "done in 1.2 s", "queued", ...
SHARDS_INPUT = "shards-input"              # number: split the Run over this many workers' shards (1 = not)
SHARDS_NOTE = "shards-note"                # why Shards is off, or which workers answer
SHARDS_POLL = "shards-poll"                # dcc.Interval: look for workers again
# a run started elsewhere (a reloaded page, another tab): shown and cancellable here (panel/run_card.py)
JOBS_POLL = "jobs-poll"                    # dcc.Interval: look for running jobs
ATTACHED_JOB = "attached-job"              # dcc.Store: the id of the job this page shows but did not start
WAITING_FOR = "waiting-for"                # box: the job this page's queued run waits for
WAITING_FOR_TEXT = "waiting-for-text"
WAITING_FOR_CANCEL = "waiting-for-cancel"  # button: cancel that job

# -- results -------------------------------------------------------------------------------
TABS = "main-tabs"
TAB_RESULTS = "tab-results"
TAB_HISTORY = "tab-history"
TAB_PATH = "tab-path"
TAB_ATTRIBUTION = "tab-attribution"
TAB_BODY_SUFFIX = "-body"                  # html.Div: a lazy tab's body, filled when first opened (page.py)
CURRENT_RUN = "current-run"                # dcc.Store: id of the run on screen
VALUE_MODE = "value-mode"                  # raw / normalized toggle
IMAGE_FORMAT = "image-format"              # png / svg for the modebar camera button
RESULTS_SUMMARY = "results-summary"
RESULTS_HEAD_LABELS = "results-head-labels"  # switch: name heads that fire on a head detector
DOWNLOAD_CSV = "download-csv"              # dcc.Download of the run's CSV
ATTENTION_STATUS = "attention-status"
ATTENTION_DOWNLOAD_BUTTON = "attention-download-button"
ATTENTION_DOWNLOAD = "attention-download"
ATTENTION_CELL = "attention-cell"          # dcc.Store: the clicked (layer, pos, head) and pair
ATTENTION_PAIR = "attention-pair"          # which prompt pair the attention panel shows
ATTENTION_RECEIVER = "attention-receiver"  # the later head shown under a head_out / head_v patch
# the Results tab's head clustergram (dashboard/tabs/clustergram.py)
CLUSTER_BUTTON = "clustergram-button"      # "Cluster heads" of the run on screen
CLUSTER_PROFILE = "clustergram-profile"    # pairs / mean
CLUSTER_DISTANCE = "clustergram-distance"  # euclidean / correlation
CLUSTER_LINKAGE = "clustergram-linkage"    # average / complete / single
CLUSTER_STATUS = "clustergram-status"
CLUSTER_GRAPH = "clustergram-graph"
CLUSTER_FOR = "clustergram-for"            # dcc.Store: the run id the clustergram on screen is of
CLUSTER_DOWNLOAD_BUTTON = "clustergram-download-button"
CLUSTER_DOWNLOAD = "clustergram-download"

# -- history & compare ---------------------------------------------------------------------
HISTORY_VERSION = "history-version"        # dcc.Store bumped when runs are saved or deleted
HISTORY_OPEN = "history-open"              # pattern-matching type: {"type": HISTORY_OPEN, "run": id}
HISTORY_DELETE = "history-delete"
HISTORY_CONFIRM = "history-confirm"        # {"type": HISTORY_CONFIRM, "run": id}: the inline "delete #N?" box
HISTORY_CONFIRM_DELETE = "history-confirm-delete"   # its "Delete" (the run goes)
HISTORY_KEEP = "history-keep"              # its "Keep" (the box closes)
HISTORY_CANCEL_JOB = "history-cancel-job"  # {"type": HISTORY_CANCEL_JOB, "job": id}: Cancel of a running job
HISTORY_POLL = "history-poll"              # dcc.Interval: the list refreshes while a job runs
HISTORY_SHOWN = "history-shown"            # dcc.Store: what the list shows (runs, jobs' status), so an idle poll redraws nothing
HISTORY_STATUS = "history-status"          # what the history's last action did (cancel requested, ...)
COMPARE_TABLE = "compare-table"
COMPARE_STATUS = "compare-status"
COMPARE_DOWNLOAD_BUTTON = "compare-download-button"
COMPARE_DOWNLOAD = "compare-download"

# -- path patching tab (uses the prompts, metric and direction of the left panel) ----------------
PATH_PANEL = "path-panel"
PATH_RECEIVERS = "path-receivers"          # text: 'q:3.0,q:3.1'
PATH_SENDERS = "path-senders"              # text: empty = every head
PATH_SWEEP = "path-sweep"                  # senders / receivers
PATH_MODE = "path-mode"                    # heads_frozen / direct
PATH_PER_POSITION = "path-per-position"
PATH_RUN_BUTTON = "path-run-button"
PATH_CANCEL_BUTTON = "path-cancel-button"
PATH_PROGRESS = "path-progress"
PATH_PROGRESS_TEXT = "path-progress-text"
PATH_BASELINES = "path-baselines"
PATH_STATUS = "path-status"
PATH_ERROR = "path-error"                  # a refused path run, said under its Run button
PATH_RUN = "path-run"                      # dcc.Store: id of the path run on screen (in the run history)
PATH_VALUE_MODE = "path-value-mode"
PATH_SUMMARY = "path-summary"
PATH_FIGURE = "path-heatmap"               # heatmap (sender layer x head) or bars (receivers sweep)
PATH_DOWNLOAD_BUTTON = "path-download-button"
PATH_DOWNLOAD = "path-download"
PATH_ATTENTION = "path-attention"          # the receiver head's attention for a clicked sender cell
PATH_ATTENTION_STATUS = "path-attention-status"

# -- attribution tab ------------------------------------------------------------------------
ATTRIBUTION_PANEL = "attribution-panel"
ATTR_KINDS = "attribution-kinds"           # multi-select, empty = all
ATTR_METHOD = "attribution-method"         # plain / ig
ATTR_STEPS = "attribution-steps"
ATTR_PER_POSITION = "attribution-per-position"
ATTR_RUN_BUTTON = "attribution-run-button"
ATTR_CANCEL_BUTTON = "attribution-cancel-button"
ATTR_PROGRESS = "attribution-progress"
ATTR_PROGRESS_TEXT = "attribution-progress-text"
ATTR_BASELINES = "attribution-baselines"
ATTR_STATUS = "attribution-status"
ATTR_ERROR = "attribution-error"           # a refused attribution run, said under its Run button
ATTR_RUN = "attribution-run"               # dcc.Store: id of the attribution run on screen
ATTR_SHOW_KIND = "attribution-show-kind"   # which kind's heatmap is shown
ATTR_VALUE_MODE = "attribution-value-mode"
ATTR_SUMMARY = "attribution-summary"
ATTR_FIGURE = "attribution-heatmap"
ATTR_DOWNLOAD_BUTTON = "attribution-download-button"
ATTR_DOWNLOAD = "attribution-download"
ATTR_AGREE_BUTTON = "attribution-agree-button"
ATTR_AGREEMENT = "attribution-agreement"
ATTR_EDGES = "attribution-edges"           # checklist: also edge scores (EAP / EAP-IG)
ATTR_EDGES_TABLE = "attribution-edges-table"
ATTR_EDGES_DOWNLOAD_BUTTON = "attribution-edges-download-button"
ATTR_EDGES_DOWNLOAD = "attribution-edges-download"

# -- shareable runs (dashboard/share.py) --------------------------------------------------------
URL = "url"                                # dcc.Location: /run/<id> opens that run
PROVENANCE_PAIRS = "provenance-pairs"      # the provenance panel's table of prompt pairs
RUN_URL_STATUS = "run-url-status"          # inline message for an unknown / malformed /run/<id>
RUN_LINK = "run-link"                      # the current run's URL, on the Results tab
PROVENANCE_PANEL = "provenance-panel"      # html.Details: where the run on screen came from
PROVENANCE_BODY = "provenance-body"
EXPORT_RUN_BUTTON = "export-run-button"    # History tab: the run on screen as run-<id>.patchboard.zip
EXPORT_RUN_DOWNLOAD = "export-run-download"
EXPORT_ATTR_BUTTON = "export-attribution-button"   # the attribution run on screen, as a run file
EXPORT_ATTR_DOWNLOAD = "export-attribution-download"
IMPORT_RUN_UPLOAD = "import-run-upload"    # History tab: a run file -> a new run
SHARE_STATUS = "share-status"              # export / import result, errors and the weights warning

# -- cost preview and exact vs attribution (dashboard/panel/cost.py, dashboard/tabs/exact.py) -----------------------------
COST_ESTIMATE = "cost-estimate"            # run card: '≈ N patched forwards (…), ≈ T s on cpu, peak ≈ M MB'
COST_SUGGESTION = "cost-suggestion"        # run card: shown when the estimate is slow
COST_SUGGESTION_BOX = "cost-suggestion-box"   # hidden unless the estimate is slow
COST_ATTRIBUTION_BUTTON = "cost-attribution-button"   # run attribution first (same kind)
ATTR_COMPARE_FIGURE = "attribution-compare-scatter"   # exact vs attribution per cell, flags coloured
ATTR_FLAGGED = "attribution-flagged"       # table of missed / invented cells
ATTR_REFINE_K = "attribution-refine-k"
ATTR_REFINE_BUTTON = "attribution-refine-button"      # exact patching of the top-k attribution cells
ATTR_REFINE_STATUS = "attribution-refine-status"
ATTR_REFINE_TABLE = "attribution-refine-table"

# -- Inspect tab (dashboard/tabs/inspect.py) ------------------------------------------------------
TAB_INSPECT = "tab-inspect"
INSPECT_PANEL = "inspect-panel"
INSPECT_VIEW = "inspect-view"                # lens | dla | topk | attention | overview | highlight | norms
INSPECT_RUN = "inspect-run"                  # clean | corrupt
INSPECT_PAIR = "inspect-pair"
INSPECT_MODE = "inspect-mode"                # accumulated | per_layer
INSPECT_VALUE = "inspect-value"              # lens colour: top_prob | answer_prob | answer_logit | answer_rank
INSPECT_COMPONENTS = "inspect-components"    # per-layer lens rows: all | blocks | heads
INSPECT_DLA_BY = "inspect-dla-by"            # layer | head
INSPECT_LAYER = "inspect-layer"
INSPECT_HEAD = "inspect-head"                # empty = every head
INSPECT_ATTENTION_VIEW = "inspect-attention-view"   # grid | token
INSPECT_POS = "inspect-pos"                  # top-k position, attention destination, norms position
INSPECT_K = "inspect-k"
INSPECT_OVERVIEW = "inspect-overview"        # attention overview layout: grid (every layer) | pair (two layers)
INSPECT_LAYER_B = "inspect-layer-b"          # the overview's second layer, side by side with inspect-layer
INSPECT_SOURCE = "inspect-source"            # highlighted text: neuron | head_norm | attention | effect
INSPECT_NEURON = "inspect-neuron"
INSPECT_RUN_ID = "inspect-run-id"            # highlight by effect: a run id (follows current-run)
INSPECT_BAND = "inspect-band"                # residual norms: one (pair) | all (mean ± std over pairs)
INSPECT_FOCUS = "inspect-focus"              # dcc.Store: the overview's clicked head {"layer", "head"}
INSPECT_DETAIL = "inspect-detail"            # above the figure: highlighted text, the enlarged head
INSPECT_TOKENS = "inspect-tokens"            # the highlighted tokens (one span per token, class token-span)
INSPECT_ZOOM = "inspect-zoom"                # the overview's enlarged head (a graph inside inspect-detail)
INSPECT_IMAGE_FORMAT = "inspect-image-format"
INSPECT_GRAPH = "inspect-graph"
INSPECT_TABLE = "inspect-table"              # the top-k DataTable (sortable)
INSPECT_TABLE_BOX = "inspect-table-box"
INSPECT_STATUS = "inspect-status"
INSPECT_DOWNLOAD_BUTTON = "inspect-download-button"
INSPECT_DOWNLOAD = "inspect-download"

# -- Neurons & weights tab (dashboard/tabs/neurons.py) ----------------------------------------------
TAB_NEURONS = "tab-neurons"
NEURONS_PANEL = "neurons-panel"
NEURONS_VIEW = "neurons-view"
NEURONS_SOURCE = "neurons-source"            # task | page
NEURONS_TASK_N = "neurons-task-n"
NEURONS_RUN = "neurons-run"                  # clean | corrupt (page prompts)
NEURONS_LAYER = "neurons-layer"
NEURONS_POS = "neurons-pos"                  # empty = every token
NEURONS_NEURON = "neurons-neuron"
NEURONS_K = "neurons-k"
NEURONS_METHOD = "neurons-method"            # pca | tsne
NEURONS_COMPOSITION = "neurons-composition"  # all | q | k | v
NEURONS_CIRCUIT = "neurons-circuit"          # ov | qk
NEURONS_HEAD = "neurons-head"
NEURONS_RANK = "neurons-rank"
NEURONS_SEQUENCES = "neurons-sequences"      # head detectors: random sequences
NEURONS_HALF_LENGTH = "neurons-half-length"  # head detectors: tokens per repeated half
NEURONS_SEED = "neurons-seed"                # head detectors: the sequences' seed
NEURONS_IMAGE_FORMAT = "neurons-image-format"
NEURONS_GRAPH = "neurons-graph"
NEURONS_TABLE = "neurons-table"
NEURONS_TABLE_BOX = "neurons-table-box"
NEURONS_STATUS = "neurons-status"
NEURONS_DOWNLOAD_BUTTON = "neurons-download-button"
NEURONS_DOWNLOAD = "neurons-download"
# the Neurons tab's dataset explorer (dashboard/tabs/neuron_explorer.py)
NX_UPLOAD = "nx-upload"                    # dcc.Upload: a prompt dataset (.txt or .csv)
NX_DATASET = "nx-dataset"                  # dcc.Store: {"source": "task"} or the saved upload's {sha, name, n}
NX_DATASET_STATUS = "nx-dataset-status"
NX_SEARCH = "nx-search"                    # substring (or regex) filter over the prompts
NX_REGEX = "nx-regex"                      # checklist: the search is a regular expression
NX_SEARCH_STATUS = "nx-search-status"
NX_PROMPTS = "nx-prompts"                  # DataTable of the matching prompts (select one)
NX_PROMPT = "nx-prompt"                    # dcc.Store: the selected prompt's index in the dataset
NX_TOKEN = "nx-token"                      # slider: the token of the selected prompt
NX_TOKEN_LABEL = "nx-token-label"
NX_TOKEN_GRAPH = "nx-token-graph"          # every layer's neurons at that token (click: pick a neuron)
NX_LAYER = "nx-layer"
NX_NEURON = "nx-neuron"
NX_NEURON_STATUS = "nx-neuron-status"
NX_HISTOGRAM = "nx-histogram"
NX_TOP = "nx-top"                          # DataTable: the neuron's top-activating tokens with context
NX_METHOD = "nx-method"                    # pca | tsne
NX_CLUSTER_POS = "nx-cluster-pos"          # the position the cluster view reads (-1: each prompt's last)
NX_CLUSTER = "nx-cluster"                  # prompts as points coloured by the neuron (click: select the prompt)

# -- Circuit tab (dashboard/tabs/circuit.py) ------------------------------------------------------
TAB_CIRCUIT = "tab-circuit"
CIRCUIT_PANEL = "circuit-panel"
CIRCUIT_SOURCE = "circuit-source"                # dropdown (multi): runs whose effects rank components
CIRCUIT_REDUCE = "circuit-reduce"                # per-position effects: sum | max
CIRCUIT_GRID = "circuit-grid"                    # the component grid (click / box select)
CIRCUIT_COMPONENTS = "circuit-components"        # text: kept components
CIRCUIT_TOP_K = "circuit-top-k"
CIRCUIT_TOP_BUTTON = "circuit-top-button"
CIRCUIT_CLEAR_BUTTON = "circuit-clear-button"
CIRCUIT_ABLATION = "circuit-ablation"            # mean | resample | zero
CIRCUIT_SEED = "circuit-seed"
CIRCUIT_CURVE_ALL = "circuit-curve-all"          # checklist: the curve over every component by |effect|
CIRCUIT_RUN_BUTTON = "circuit-run-button"
CIRCUIT_CANCEL_BUTTON = "circuit-cancel-button"
CIRCUIT_STATUS = "circuit-status"
CIRCUIT_PROGRESS = "circuit-progress"            # text while a run is queued / running
CIRCUIT_FAITHFULNESS = "circuit-faithfulness"    # the number, after a run
CIRCUIT_FAITHFULNESS_VALUE = "circuit-faithfulness-value"   # the number itself (e2e reads it)
CIRCUIT_CURVE = "circuit-curve"
CIRCUIT_RESULT = "circuit-result"                # dcc.Store: the last run (circuit dict + curve JSON)
CIRCUIT_DOWNLOAD_BUTTON = "circuit-download-button"
CIRCUIT_DOWNLOAD = "circuit-download"
CIRCUIT_EDGES_BUTTON = "circuit-edges-button"    # compute EAP edges on the current prompts
CIRCUIT_EDGES_RUN = "circuit-edges-run"          # dcc.Store: attribution run id whose edges are drawn
CIRCUIT_THRESHOLD = "circuit-threshold"          # slider: share of the largest |score|
CIRCUIT_EDGE_GRAPH = "circuit-edge-graph"
CIRCUIT_EDGES_STATUS = "circuit-edges-status"

# -- Features tab (SAE features) --------------------------------------------------------------------
TAB_FEATURES = "tab-features"
FEATURES_PANEL = "features-panel"
FEATURES_VIEW = "features-view"              # top | contexts | logits | tasks
FEATURES_K = "features-k"
FEATURES_LAYER = "features-layer"
FEATURES_FEATURE = "features-feature"
FEATURES_TASK = "features-task"              # the task whose prompts give the contexts
FEATURES_N = "features-n"                    # how many prompts (contexts, tasks)
RESULTS_TOP_FEATURES_BUTTON = "results-top-features-button"   # a feature run's top units per layer, CSV
RESULTS_TOP_FEATURES_DOWNLOAD = "results-top-features-download"


def control_id(tab: str, name: str) -> str:
    """The box of one selector of a view tab, shown or hidden per view.

    >>> control_id("inspect", "attention_view")
    'inspect-ctl-attention-view'
    """
    return f"{tab}-ctl-{name.replace('_', '-')}"


class ViewIds(NamedTuple):
    """A view tab's body: figure, status, sortable table (and its box), image format, CSV download."""
    graph: str
    status: str
    table: str
    table_box: str
    image_format: str
    download_button: str
    download: str


def view_ids(prefix: str) -> ViewIds:
    """The body ids of the view tab `prefix` ("inspect", "neurons").

    >>> view_ids("inspect").graph == INSPECT_GRAPH and view_ids("neurons").table_box == NEURONS_TABLE_BOX
    True
    """
    return ViewIds(*(f"{prefix}-{part}" for part in ("graph", "status", "table", "table-box", "image-format",
                                                      "download-button", "download")))


def tab_body(tab_id: str) -> str:
    """The id of a lazily rendered tab's body (`dashboard.page`).

    >>> tab_body(TAB_INSPECT)
    'tab-inspect-body'
    """
    return tab_id + TAB_BODY_SUFFIX
