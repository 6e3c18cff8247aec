"""`python -m patching neurons|weights ...`: the neuron explorer and weight-based views as CSV.

Registered by `cli.build_parser` through `add_commands(sub)`; flags, loading and exit codes from
`cli/common.py`, as every command: 0 ok, 2 bad input (one line), 1 internal error.

    python -m patching neurons --view top --task factual --n 40 --layer 2 --pos -1 --k 20
    python -m patching neurons --view top-activating --texts prompts.txt --layer 2 --neuron 17
    python -m patching neurons --view cluster --method tsne --layer 3 --neuron 17 --out clusters.csv
    python -m patching neurons --view search --texts prompts.csv --search "capital" [--regex]
    python -m patching neurons --view token --texts prompts.txt --prompt 3 --pos 5     # every layer there
    python -m patching neurons --view histogram --texts prompts.txt --layer 2 --neuron 17 --pos all
    python -m patching neurons --view shortlist --pairs pairs.csv --positions 4 --top 20
    python -m patching weights --view composition --composition k
    python -m patching weights --view svd-tokens --layer 1 --head 4 --circuit ov
    python -m patching weights --view rank-k --layer 1 --head 4 --ranks 1,2,4 --pairs pairs.csv
    python -m patching features --layer 2 --feature 5 --view contexts --texts prompts.txt
    python -m patching features --layer 2 --feature 5 --view tasks --saes my_saes/

>>> from patching.cli import build_parser
>>> build_parser().parse_args(["neurons", "--view", "cluster"]).task
'factual'
"""
from __future__ import annotations

import argparse

from patching.cli.common import (EXIT_OK, MAX_COUNT, BadInput, check_outputs, has_pairs, load, load_model,
                                 load_pairs_or_task, megabytes, model_flags, out_flag, pair_flags, positive, whole,
                                 write)
from patching.core.prompts import MAX_PAIRS

MAX_TEXTS_BYTES = 16 * 2**20     # --texts: read at most this much

NEURON_VIEWS = ("top", "profile", "top-activating", "activations", "cluster", "shortlist", "search", "token",
                "histogram")
WEIGHT_VIEWS = ("composition", "svd", "svd-tokens", "rank-k", "rank-k-pattern")
FEATURE_VIEWS = ("contexts", "histogram", "logits", "tasks")


def _pos(value: str) -> int | None:
    """'-1', '3' or 'all' (every token) -> int or None.

    >>> _pos("all"), _pos("-1")
    (None, -1)
    """
    if str(value).strip().lower() == "all":
        return None
    try:
        return whole(-MAX_COUNT, MAX_COUNT)(str(value))
    except argparse.ArgumentTypeError:
        raise ValueError(f"--pos must be a whole number from {-MAX_COUNT} to {MAX_COUNT} or 'all', "
                         f"not {str(value)[:60]!r}") from None


def _prompt_flags(p: argparse.ArgumentParser) -> None:
    """The prompt flags of `neurons` and `weights`: pairs, or a task's prompts (factual by default)."""
    pair_flags(p, answer_example=" France", wrong_example=None, task="factual")
    out_flag(p)


def _texts(args: argparse.Namespace):
    """--texts FILE (one prompt per line, or a CSV with a text column and an optional label
    column), --pairs / --clean... (the clean prompts, labelled by their answers), else a task."""
    from patching.inspect.neurons import encode_texts, task_texts, texts_from_prompts
    if args.texts:
        model = load_model(args)
        texts, labels = _read_texts(args.texts)
        return model, encode_texts(model, texts, labels, prepend_bos=not args.no_bos)
    if has_pairs(args):
        model, prompts = load(args)
        return model, texts_from_prompts(prompts, model, args.run)
    model = load_model(args)
    return model, task_texts(model, args.task, args.n, seed=args.seed, prepend_bos=not args.no_bos)


def _read_texts(path: str) -> tuple[list[str], list[str] | None]:
    from patching.inspect.datasets import read_texts
    try:
        with open(path, "rb") as f:
            raw = f.read(MAX_TEXTS_BYTES + 1)
    except OSError as exc:
        raise BadInput(f"cannot read texts file {path!r}: {exc.strerror}") from None
    if len(raw) > MAX_TEXTS_BYTES:
        raise BadInput(f"texts file {path!r} is larger than {MAX_TEXTS_BYTES // 2**20} MB; give at most "
                       f"{MAX_PAIRS:,} prompts")
    return read_texts(raw, path)


def cmd_neurons(args: argparse.Namespace) -> int:
    check_outputs(args)
    from patching.inspect import neurons as N
    from patching.core.spec import parse_int_list
    from patching.core.results import write_csv
    if args.view == "shortlist":
        model, prompts = load_pairs_or_task(args)
        df = N.neuron_shortlist(model, prompts, layers=parse_int_list(args.layers, "layers"),
                                positions=parse_int_list(args.positions, "positions"), top=args.top,
                                metric=args.metric, direction=args.direction, exact=not args.no_exact)
    else:
        model, texts = _texts(args)
        df = _search_frame(args, texts) if args.view == "search" else _acts_frame(
            args, N.collect_activations(model, texts, max_memory_mb=args.max_memory), _pos(args.pos))
    write(write_csv(df), args.out)
    return EXIT_OK


def _search_frame(args: argparse.Namespace, texts):
    """--view search: the prompts matching --search (substring, or --regex), with their token counts."""
    import pandas as pd
    from patching.inspect.datasets import search
    rows = search(texts, args.search, regex=args.regex)
    return pd.DataFrame({"prompt": rows, "label": [texts.labels[i] for i in rows],
                         "tokens": [texts.lengths[i] for i in rows], "text": [texts.texts[i] for i in rows]})


def _acts_frame(args: argparse.Namespace, acts, pos):
    """The views that read activations: top, profile, top-activating, activations, token, histogram, cluster."""
    from patching.inspect import datasets as D
    from patching.inspect import neurons as N
    view = args.view
    if view in ("profile", "top-activating", "histogram") and args.neuron is None:
        raise BadInput(f"--view {view} needs --neuron N")
    if view == "top":
        return N.top_neurons(acts, args.layer, pos, k=args.k, by=args.by)
    if view == "profile":
        return N.neuron_profile(acts, args.layer, args.neuron)
    if view == "top-activating":
        return N.top_activating(acts, args.layer, args.neuron, k=args.k, pos=pos, context=args.context)
    if view == "activations":
        return N.activations_frame(acts, args.layer, pos)
    if view == "token":
        if pos is None:
            raise BadInput("--view token needs one token (--pos N or -1), not 'all'")
        return D.token_activations(acts, args.prompt, pos)
    if view == "histogram":
        return D.activation_histogram(acts, args.layer, args.neuron, pos, bins=args.bins)
    if pos is None:
        raise BadInput("--view cluster needs one position (e.g. --pos -1), not 'all'")
    if args.neuron is not None:
        return D.cluster_by_neuron(acts, args.layer, args.neuron, pos, method=args.method,
                                   perplexity=args.perplexity, seed=args.seed)
    return N.cluster_prompts(acts, args.layer, pos, method=args.method, perplexity=args.perplexity, seed=args.seed)


def cmd_weights(args: argparse.Namespace) -> int:
    from patching.inspect import weights as W
    from patching.core.spec import parse_int_list
    from patching.core.results import write_csv
    check_outputs(args)
    fold = not args.no_fold_ln
    if args.view in ("rank-k", "rank-k-pattern"):
        if args.head is None:
            raise BadInput(f"--view {args.view} needs --head H (and --layer L)")
        model, prompts = load_pairs_or_task(args)
        if args.view == "rank-k":
            df = W.rank_k_head(model, prompts, args.layer, args.head, parse_int_list(args.ranks, "ranks"),
                               metric=args.metric, run=args.run, fold_ln=fold)
        else:
            df = W.rank_k_pattern(model, prompts, args.layer, args.head, args.rank, pair=args.pair,
                                  run=args.run, fold_ln=fold)
    else:
        model = load_model(args)
        if args.view == "composition":
            df = W.composition_scores(model, args.composition, fold_ln=fold)
        elif args.view == "svd":
            df = W.singular_values(model, args.circuit, fold_ln=fold)
        else:
            if args.head is None:
                raise BadInput("--view svd-tokens needs --head H (and --layer L)")
            df = W.singular_tokens(model, args.layer, args.head, args.circuit, n_dirs=args.n_dirs, k=args.k,
                                   project=args.project, fold_ln=fold)
    write(write_csv(df), args.out)
    return EXIT_OK


def cmd_features(args: argparse.Namespace) -> int:
    """A feature page's tables: top contexts, histogram, logit effects or per-task patching effect."""
    from patching.core.results import write_csv
    from patching.inspect import features as F
    from patching.model.sae import model_saes
    check_outputs(args)
    if args.view == "tasks":
        model = load_model(args)
        df = F.task_effects(model, args.layer, args.feature, n=args.n, saes=args.saes, direction=args.direction)
    elif args.view == "logits":
        model = load_model(args)
        saes = model_saes(model, args.saes)
        if args.layer not in saes:
            raise BadInput(f"--layer {args.layer}: no SAE there (SAEs on layers {', '.join(map(str, sorted(saes)))})")
        df = F.logit_effects(model, saes[args.layer], args.feature, k=args.k)
    else:
        model, texts = _texts(args)
        acts = F.collect_feature_activations(model, texts, model_saes(model, args.saes))
        df = (F.top_contexts(acts, args.layer, args.feature, k=args.k) if args.view == "contexts"
              else F.histogram(acts, args.layer, args.feature)[0])
    write(write_csv(df), args.out)
    return EXIT_OK


def _add_features(sub) -> None:
    p = sub.add_parser("features", help="an SAE feature's page: top-activating contexts, activation "
                                        "histogram, logit effects, exact patching effect per task")
    model_flags(p)
    _prompt_flags(p)
    p.add_argument("--view", default="contexts", choices=FEATURE_VIEWS)
    p.add_argument("--layer", type=whole(0, MAX_COUNT), required=True, help="the SAE's layer (block input)")
    p.add_argument("--feature", type=whole(0, MAX_COUNT), required=True, help="the feature")
    p.add_argument("--saes", help="a folder of sae-lens SAE folders (default: the model's own saes/)")
    p.add_argument("--texts", help="contexts / histogram: a text file (one prompt per line) or a CSV "
                                   "with a 'text' column; default: the task's prompts")
    p.add_argument("--run", default="clean", choices=["clean", "corrupt"],
                   help="with --pairs / --clean: which prompts' activations")
    p.add_argument("--k", type=whole(1, MAX_COUNT), default=20, help="rows (contexts) or tokens per side (logits)")
    p.add_argument("--direction", default="denoise", choices=["denoise", "noise"], help="tasks: direction")
    p.set_defaults(func=cmd_features)


def add_commands(sub) -> None:
    """Register `neurons`, `weights` and `features` on the CLI's subparsers (see the module's example)."""
    _add_features(sub)
    p = sub.add_parser("neurons", help="neuron explorer: top neurons, a neuron's activations, top-activating "
                                       "tokens, PCA / t-SNE of prompts, attribution + exact shortlist")
    model_flags(p)
    _prompt_flags(p)
    p.add_argument("--view", default="top", choices=NEURON_VIEWS)
    p.add_argument("--texts", help="prompts of any length: a text file (one per line) or a CSV with "
                                   "'text' and optional 'label' columns")
    p.add_argument("--run", default="clean", choices=["clean", "corrupt"],
                   help="with --pairs / --clean: which prompts' activations")
    p.add_argument("--layer", type=whole(-MAX_COUNT, MAX_COUNT), default=-1, help="layer (default -1: the last)")
    p.add_argument("--pos", default="-1", help="position: -1 = each prompt's last token (default), "
                                               "N = absolute, 'all' = every token")
    p.add_argument("--neuron", type=whole(0, MAX_COUNT),
                   help="the neuron (profile, top-activating, histogram; cluster: colour by it)")
    p.add_argument("--prompt", type=whole(0, MAX_COUNT), default=0, help="token: which prompt (default 0)")
    p.add_argument("--context", type=whole(0, MAX_COUNT), default=8,
                   help="top-activating: tokens of context on each side (default 8)")
    p.add_argument("--bins", type=whole(1, 1000), default=40, help="histogram: bins (default 40)")
    p.add_argument("--search", help="search: text the prompts contain (case-insensitive)")
    p.add_argument("--regex", action="store_true", help="search: --search is a regular expression")
    p.add_argument("--max-memory", type=megabytes, metavar="MB",
                   help="the activations' memory budget (default: 25%% of free RAM, at most 4 GiB)")
    p.add_argument("--k", type=whole(1, MAX_COUNT), default=20, help="how many rows (top, top-activating; default 20)")
    p.add_argument("--by", default="mean", choices=["mean", "abs_mean", "max"], help="top: rank neurons by")
    p.add_argument("--method", default="pca", choices=["pca", "tsne"], help="cluster: pca or tsne "
                                                                           "(t-SNE needs scikit-learn)")
    p.add_argument("--perplexity", type=positive, help="t-SNE perplexity (default min(30, (n-1)/3))")
    p.add_argument("--layers", help="shortlist: layers, e.g. 0-3 (default all)")
    p.add_argument("--positions", help="shortlist: positions the patches apply to (default all)")
    p.add_argument("--top", type=whole(1, MAX_COUNT), default=20, help="shortlist: neurons patched exactly (default 20)")
    p.add_argument("--no-exact", action="store_true", help="shortlist: attribution scores only")
    p.add_argument("--metric", default="logit_diff", help="shortlist: metric (default logit_diff)")
    p.add_argument("--direction", default="denoise", choices=["denoise", "noise"])
    p.set_defaults(func=cmd_neurons)

    p = sub.add_parser("weights", help="weight-based circuits: composition scores, OV/QK SVD, rank-k heads")
    model_flags(p)
    _prompt_flags(p)
    p.add_argument("--view", default="composition", choices=WEIGHT_VIEWS)
    p.add_argument("--composition", default="all", choices=["all", "q", "k", "v"])
    p.add_argument("--circuit", default="ov", choices=["ov", "qk"])
    p.add_argument("--layer", type=whole(-MAX_COUNT, MAX_COUNT), default=0, help="the head's layer (svd-tokens, rank-k)")
    p.add_argument("--head", type=whole(-MAX_COUNT, MAX_COUNT), help="the head (svd-tokens, rank-k)")
    p.add_argument("--n-dirs", type=whole(1, MAX_COUNT), default=3, help="svd-tokens: singular directions (default 3)")
    p.add_argument("--k", type=whole(1, MAX_COUNT), default=10, help="svd-tokens: tokens per direction (default 10)")
    p.add_argument("--project", default="auto", choices=["auto", "unembed", "embed"],
                   help="svd-tokens: auto = OV output through W_U, reading sides through W_E")
    p.add_argument("--ranks", help="rank-k: ranks, e.g. 1,2,4 (default 1, 2, 4, ... d_head)")
    p.add_argument("--rank", type=whole(1, MAX_COUNT), default=1, help="rank-k-pattern: the rank (default 1)")
    p.add_argument("--pair", type=whole(0, MAX_PAIRS), default=0, help="rank-k-pattern: which pair (default 0)")
    p.add_argument("--run", default="clean", choices=["clean", "corrupt"])
    p.add_argument("--metric", default="logit_diff", help="rank-k: metric (default logit_diff)")
    p.add_argument("--no-fold-ln", action="store_true", help="use the raw weights (default: ln1's "
                                                             "weight folded into W_Q, W_K, W_V)")
    p.set_defaults(func=cmd_weights)
