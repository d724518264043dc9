"""``clipbeam train-head`` and ``clipbeam convert-head``: heads of your own, and published ones.

``train-head`` reads embeddings (``clipbeam embed`` output, or any Parquet with an id and an
embedding column) and labels (Parquet with the same ids), joins them on the id and trains a head
on one machine: a linear probe (logistic regression, or linear regression for a numeric target)
by default, a one-hidden-layer MLP with ``--hidden N``. Rows are split into train, validation
(early stopping) and test (evaluation) sets by a seeded permutation; the same inputs and seed give
the same head, byte for byte, on one machine and torch build. The result is a format-1 head
(``model.heads``), usable with ``--head`` at once; its ``head.json`` stores the held-out
evaluation next to the majority-class (or mean) baseline.

``convert-head`` writes a head in a published layout (LAION's aesthetic predictor, NeMo
Curator's NSFW detector) as format 1.
"""

from __future__ import annotations

import argparse
import itertools
import math
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from clipbeam.pipeline.options import LaunchError

__all__ = ["TrainedHead", "convert_main", "evaluate", "train_head", "train_main"]

TASKS = ("auto", "classification", "regression")


@dataclass(frozen=True)
class TrainedHead:
    """What :func:`train_head` returns.

    Attributes:
        head: the trained ``model.heads.Head`` (in float32, on CPU).
        evaluation: the held-out metrics and the baseline's, as stored in ``head.json``.
        epochs: epochs run (early stopping included).
    """

    head: Any
    evaluation: dict[str, Any]
    epochs: int


# -- reading ------------------------------------------------------------------------------------


def _read_columns(patterns: Sequence[str], columns: Sequence[str], option: str) -> Any:
    """The columns of every Parquet file the patterns match, as one pyarrow table."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from clipbeam.transforms import storage
    from clipbeam.transforms.units import plan_units

    try:
        paths = list(dict.fromkeys(u.path for u in plan_units(list(patterns))))
    except (FileNotFoundError, ValueError, OSError) as exc:
        raise LaunchError(f"{option}: {exc}") from None
    if not paths:
        raise LaunchError(f"{option} {', '.join(patterns)} holds no rows")
    tables = []
    for path in paths:
        with storage.open_input(path) as f:
            schema = pq.ParquetFile(f).schema_arrow
            absent = [c for c in columns if c not in schema.names]
            if absent:
                raise LaunchError(
                    f"{option}: {path} has no column {', '.join(absent)} (it has "
                    f"{', '.join(schema.names)})"
                )
            f.seek(0)
            tables.append(pq.read_table(f, columns=list(columns)))
    try:
        return pa.concat_tables(tables)
    except pa.ArrowInvalid as exc:
        raise LaunchError(f"{option}: the files' columns have different types ({exc})") from None


def _embedding_matrix(column: Any, where: str) -> np.ndarray:
    import pyarrow as pa

    chunks = []
    for chunk in column.chunks:
        if not pa.types.is_fixed_size_list(chunk.type) and not pa.types.is_list(chunk.type):
            raise LaunchError(f"{where} has type {chunk.type}, not a list of floats")
        if chunk.null_count:
            raise LaunchError(f"{where} holds {chunk.null_count} null embeddings")
        flat = chunk.flatten().to_numpy(zero_copy_only=False).astype(np.float32)
        chunks.append(flat.reshape(len(chunk), -1) if len(chunk) else flat.reshape(0, 0))
    rows = [c for c in chunks if c.size]
    if not rows or len({c.shape[1] for c in rows}) != 1:
        raise LaunchError(f"{where}: embeddings of one size expected")
    return np.concatenate(rows)


def load_training_data(
    embeddings: Sequence[str],
    labels: Sequence[str],
    *,
    label_column: str,
    id_column: str = "id",
    embedding_column: str = "image_embedding",
) -> tuple[np.ndarray, list[Any], str | None]:
    """Embeddings joined with their labels on the id.

    Returns:
        ``(X, y, model)``: ``float32[N, D]``, the N labels (rows without a label or with a null
        one are left out) and the model recorded in the embeddings' metadata, if any.

    Raises:
        LaunchError: a missing column, duplicated ids in the labels, or nothing left to train on.
    """
    emb = _read_columns(embeddings, [id_column, embedding_column], "--embeddings")
    lab = _read_columns(labels, [id_column, label_column], "--labels")
    label_ids = lab.column(id_column).to_pylist()
    values = lab.column(label_column).to_pylist()
    by_id = dict(zip(label_ids, values, strict=True))
    if len(by_id) != len(label_ids):
        raise LaunchError(
            f"--labels: {len(label_ids) - len(by_id)} ids appear more than once in "
            f"{id_column!r}; give each row one label"
        )
    ids = emb.column(id_column).to_pylist()
    keep = [i for i, row_id in enumerate(ids) if by_id.get(row_id) is not None]
    if len(keep) < 10:
        raise LaunchError(
            f"only {len(keep)} of {len(ids)} embeddings have a label in {label_column!r} "
            f"(joined on {id_column!r}); a head needs at least 10 labelled rows"
        )
    matrix = _embedding_matrix(
        emb.column(embedding_column), f"--embedding-column {embedding_column}"
    )
    metadata = emb.schema.metadata or {}
    model = metadata.get(b"clipbeam.model")
    y = [by_id[ids[i]] for i in keep]
    return matrix[keep], y, model.decode("utf-8") if model else None


# -- training -----------------------------------------------------------------------------------


def _targets(
    y: Sequence[Any], task: str, positive: str | None
) -> tuple[str, np.ndarray, tuple[str, ...]]:
    """``(task, targets, classes)``: 0/1 targets of a classifier, or the regression targets."""
    numeric = all(isinstance(v, int | float) and not isinstance(v, bool) for v in y)
    if task == "auto":
        integral = numeric and all(float(v).is_integer() for v in y)
        task = "regression" if numeric and not (integral and len(set(y)) <= 2) else "classification"
    if task == "regression":
        if not numeric:
            raise LaunchError("--task regression needs a numeric label column")
        if positive is not None:
            raise LaunchError("--positive-class is for classification, not regression")
        return task, np.asarray(y, dtype=np.float64), ()
    classes = sorted({str(v) for v in y})
    if len(classes) < 2:
        raise LaunchError(f"the label column holds one class only ({len(y)} rows)")
    if positive is None:
        if len(classes) > 2:
            raise LaunchError(
                f"the label column holds {len(classes)} classes; a head gives one number, so "
                "pass --positive-class VALUE for a one-vs-rest head (one head per class)"
            )
        positive = "True" if classes == ["False", "True"] else classes[1]
    if positive not in classes:
        raise LaunchError(f"--positive-class is not one of the {len(classes)} classes")
    negative = "rest" if len(classes) > 2 else next(c for c in classes if c != positive)
    targets = np.asarray([str(v) == positive for v in y], dtype=np.float64)
    return task, targets, (negative, positive)


def _split(n: int, seed: int, val: float, test: float) -> tuple[np.ndarray, ...]:
    order = np.random.default_rng(np.random.SeedSequence(seed, spawn_key=(7,))).permutation(n)
    n_test, n_val = max(1, round(n * test)), max(1, round(n * val))
    if n - n_test - n_val < 2:
        raise LaunchError(f"{n} rows leave too few for training after the held-out splits")
    return order[n_test + n_val :], order[n_test : n_test + n_val], order[:n_test]


def train_head(
    x: np.ndarray,
    y: Sequence[Any],
    *,
    task: str = "auto",
    positive: str | None = None,
    hidden: int = 0,
    seed: int = 0,
    val_fraction: float = 0.1,
    test_fraction: float = 0.2,
    max_epochs: int = 200,
    patience: int = 10,
    batch_size: int = 256,
    lr: float = 3e-3,
    weight_decay: float = 1e-4,
    trained_on: str | None = None,
    meaning: str = "",
) -> TrainedHead:
    """Trains a head on embeddings ``x`` with labels ``y``; see the module docstring.

    The embeddings are L2-normalized (as the head normalizes its input), then standardized with
    the training rows' mean and standard deviation, which is folded into the first layer
    afterwards (and a regression target's scaling into the last), so the stored head reads plain
    embeddings.
    """
    import torch

    from clipbeam.model.heads import Head, HeadConfig, LayerConfig

    task, targets, classes = _targets(y, task, positive)
    x = np.asarray(x, dtype=np.float32)
    x = x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)
    train, val, test = _split(len(x), seed, val_fraction, test_fraction)
    mu = x[train].mean(axis=0)
    sd = np.maximum(x[train].std(axis=0), 1e-6)
    t_mu, t_sd = (float(targets[train].mean()), float(targets[train].std() or 1.0))
    if task == "classification":
        t_mu, t_sd = 0.0, 1.0
    xs = torch.from_numpy((x - mu) / sd)
    ts = torch.from_numpy(((targets - t_mu) / t_sd).astype(np.float32))

    torch.manual_seed(seed)
    dim = x.shape[1]
    sizes = [dim, hidden, 1] if hidden else [dim, 1]
    layers = [torch.nn.Linear(a, b) for a, b in itertools.pairwise(sizes)]
    net = torch.nn.Sequential(*(m for layer in layers[:-1] for m in (layer, torch.nn.ReLU())))
    net.append(layers[-1])
    loss_fn = torch.nn.BCEWithLogitsLoss() if task == "classification" else torch.nn.MSELoss()
    optimizer = torch.optim.AdamW(net.parameters(), lr=lr, weight_decay=weight_decay)
    generator = torch.Generator().manual_seed(seed)
    best, best_state, stale, epochs = math.inf, None, 0, 0
    train_t = torch.from_numpy(train)
    for epoch in range(max_epochs):
        epochs = epoch + 1
        net.train()
        order = train_t[torch.randperm(len(train_t), generator=generator)]
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            optimizer.zero_grad()
            loss_fn(net(xs[rows]).squeeze(-1), ts[rows]).backward()
            optimizer.step()
        net.eval()
        with torch.no_grad():
            val_loss = float(loss_fn(net(xs[val]).squeeze(-1), ts[val]))
        if val_loss < best - 1e-5:
            best, stale = val_loss, 0
            best_state = {k: v.clone() for k, v in net.state_dict().items()}
        else:
            stale += 1
            if stale >= patience:
                break
    net.load_state_dict(best_state)  # type: ignore[arg-type]

    activations = ["relu"] * (len(layers) - 1) + ["none"]
    config = HeadConfig(
        layers=tuple(
            LayerConfig(a, b, act)
            for a, b, act in zip(sizes[:-1], sizes[1:], activations, strict=True)
        ),
        embedding_dim=dim,
        output="sigmoid" if task == "classification" else "identity",
        trained_on=trained_on,
        meaning=meaning
        or (
            f"probability of {classes[1]!r} (vs {classes[0]!r})"
            if classes
            else "predicted value of the regression target"
        ),
        classes=classes,
        source="clipbeam train-head",
    )
    with torch.no_grad():
        weight = layers[0].weight / torch.from_numpy(sd)  # fold the standardization in
        bias = layers[0].bias - weight @ torch.from_numpy(mu)
        folded = [(weight, bias)] + [(m.weight, m.bias) for m in layers[1:]]
        w_last, b_last = folded[-1]
        folded[-1] = (w_last * t_sd, b_last * t_sd + t_mu)  # and the target's scaling
    head = Head(config)
    head.load_state_dict(_state(folded))
    head.eval()
    with torch.no_grad():
        predicted = head(torch.from_numpy(x[test])).numpy().astype(np.float64)
    evaluation = evaluate(task, targets[test], predicted, float(targets[train].mean()))
    evaluation["rows"] = {"train": len(train), "validation": len(val), "test": len(test)}
    evaluation.update(task=task, hidden=hidden, seed=seed, epochs=epochs)
    head = Head(replace(config, evaluation=evaluation))
    head.load_state_dict(_state(folded))
    return TrainedHead(head=head.eval(), evaluation=evaluation, epochs=epochs)


def _state(folded: list[tuple[Any, Any]]) -> dict[str, Any]:
    return {
        f"layers.{i}.{part}": tensor.detach().clone()
        for i, pair in enumerate(folded)
        for part, tensor in zip(("weight", "bias"), pair, strict=True)
    }


# -- evaluation ---------------------------------------------------------------------------------


def _ranks(values: np.ndarray) -> np.ndarray:
    """Ranks from 1, ties sharing their mean rank."""
    order = np.argsort(values, kind="stable")
    sorted_values = values[order]
    ranks = np.empty(len(values), dtype=np.float64)
    starts = np.flatnonzero(np.r_[True, sorted_values[1:] != sorted_values[:-1]])
    ends = np.r_[starts[1:], len(values)]
    for lo, hi in zip(starts, ends, strict=True):
        ranks[order[lo:hi]] = (lo + hi + 1) / 2
    return ranks


def _auc(targets: np.ndarray, scores: np.ndarray) -> float | None:
    positives = targets > 0.5
    n_pos, n_neg = int(positives.sum()), int((~positives).sum())
    if not n_pos or not n_neg:
        return None
    ranks = _ranks(scores)
    return float((ranks[positives].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


def _spearman(a: np.ndarray, b: np.ndarray) -> float | None:
    ra, rb = _ranks(a), _ranks(b)
    if ra.std() == 0 or rb.std() == 0:
        return None
    return float(np.corrcoef(ra, rb)[0, 1])


def evaluate(
    task: str, targets: np.ndarray, predicted: np.ndarray, train_mean: float
) -> dict[str, Any]:
    """Held-out metrics of a head and of the baseline that predicts the training majority class
    (classification: accuracy, AUC) or the training mean (regression: MSE, Spearman)."""
    if task == "classification":
        majority = 1.0 if train_mean >= 0.5 else 0.0
        return {
            "metrics": {
                "accuracy": float(((predicted >= 0.5) == (targets > 0.5)).mean()),
                "auc": _auc(targets, predicted),
            },
            "baseline": {
                "name": "majority class",
                "accuracy": float((targets == majority).mean()),
                "auc": 0.5,
            },
        }
    return {
        "metrics": {
            "mse": float(((predicted - targets) ** 2).mean()),
            "spearman": _spearman(predicted, targets),
        },
        "baseline": {
            "name": "training mean",
            "mse": float(((train_mean - targets) ** 2).mean()),
            "spearman": None,
        },
    }


def _describe(evaluation: dict[str, Any]) -> str:
    def fmt(value: Any) -> str:
        return "n/a" if value is None else f"{value:.4f}"

    parts = [
        f"{key} {fmt(value)} (baseline {fmt(evaluation['baseline'].get(key))})"
        for key, value in evaluation["metrics"].items()
    ]
    rows = evaluation["rows"]
    return (
        f"{evaluation['task']} on {rows['test']:,} held-out rows: {', '.join(parts)}; "
        f"trained on {rows['train']:,} rows, {evaluation['epochs']} epochs"
    )


# -- command lines ------------------------------------------------------------------------------


def _fraction(text: str) -> float:
    value = float(text)
    if not 0 < value < 0.5:
        raise argparse.ArgumentTypeError(f"expected a fraction in (0, 0.5), got {text}")
    return value


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected at least 1, got {text}")
    return value


class _Parser(argparse.ArgumentParser):
    def error(self, message: str):  # type: ignore[override]
        raise LaunchError(f"{message} (see `{self.prog} --help`)")


def train_parser(prog: str = "clipbeam train-head") -> argparse.ArgumentParser:
    """The ``clipbeam train-head`` argument parser."""
    p = _Parser(prog=prog, description=__doc__.split("\n\n")[1], allow_abbrev=False)
    p.add_argument("--embeddings", action="extend", nargs="+", required=True, metavar="PATTERN")
    p.add_argument("--labels", action="extend", nargs="+", required=True, metavar="PATTERN")
    p.add_argument("--label-column", required=True, metavar="C")
    p.add_argument("--out", required=True, metavar="DIR", help="folder of the format-1 head")
    p.add_argument("--id-column", default="id", help="the id both inputs are joined on")
    p.add_argument("--embedding-column", default="image_embedding")
    p.add_argument(
        "--task",
        choices=TASKS,
        default="auto",
        help="auto: regression for a float column or integers with more than two values, "
        "else classification",
    )
    p.add_argument("--positive-class", help="the class whose probability the head gives")
    p.add_argument("--hidden", type=int, default=0, help="hidden units of an MLP (0: linear)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--val-fraction", type=_fraction, default=0.1, help="for early stopping")
    p.add_argument("--test-fraction", type=_fraction, default=0.2, help="for the evaluation")
    p.add_argument("--max-epochs", type=_positive_int, default=200)
    p.add_argument("--patience", type=_positive_int, default=10)
    p.add_argument("--batch-size", type=_positive_int, default=256)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--weight-decay", type=float, default=1e-4)
    p.add_argument("--meaning", default="", help="what the output means, stored in head.json")
    p.add_argument("--trained-on", help="the model (default: read from the embeddings' metadata)")
    return p


def train_main(argv: Sequence[str] | None = None) -> int:
    """``clipbeam train-head``: 0 on success, 2 with one line on stderr for a bad argument."""
    from clipbeam.model.heads import save_head

    try:
        args = train_parser().parse_args(list(sys.argv[1:] if argv is None else argv))
        if args.hidden < 0:
            raise LaunchError(f"--hidden must be 0 (linear) or more, got {args.hidden}")
        started = time.perf_counter()
        x, y, model = load_training_data(
            args.embeddings,
            args.labels,
            label_column=args.label_column,
            id_column=args.id_column,
            embedding_column=args.embedding_column,
        )
        trained = train_head(
            x,
            y,
            task=args.task,
            positive=args.positive_class,
            hidden=args.hidden,
            seed=args.seed,
            val_fraction=args.val_fraction,
            test_fraction=args.test_fraction,
            max_epochs=args.max_epochs,
            patience=args.patience,
            batch_size=args.batch_size,
            lr=args.lr,
            weight_decay=args.weight_decay,
            trained_on=args.trained_on or model,
            meaning=args.meaning,
        )
    except LaunchError as exc:
        print(f"clipbeam train-head: error: {exc}", file=sys.stderr)
        return 2
    folder = save_head(trained.head, args.out)
    seconds = time.perf_counter() - started
    print(f"clipbeam train-head: {_describe(trained.evaluation)}")
    print(f"clipbeam train-head: wrote {folder} in {seconds:.1f} s; use it as --head NAME={folder}")
    return 0


def convert_main(argv: Sequence[str] | None = None) -> int:
    """``clipbeam convert-head SOURCE --out DIR``: a published head as format 1."""
    from clipbeam.model.heads import Head, HeadError, load_head, save_head

    p = _Parser(
        prog="clipbeam convert-head",
        description="Writes a head in LAION's aesthetic or NeMo Curator's NSFW layout (.pth or "
        ".safetensors), or a clipbeam head, as a clipbeam head folder (head.json + "
        "head.safetensors).",
        allow_abbrev=False,
    )
    p.add_argument("source", help="the head file or folder, local or gs://")
    p.add_argument("--out", required=True, metavar="DIR")
    p.add_argument("--meaning", help="what the output means (replaces the layout's)")
    p.add_argument("--trained-on", help="the model whose embeddings the head reads")
    try:
        args = p.parse_args(list(sys.argv[1:] if argv is None else argv))
        head = load_head(args.source)
    except (LaunchError, HeadError) as exc:
        print(f"clipbeam convert-head: error: {exc}", file=sys.stderr)
        return 2
    changes = {k: v for k, v in (("meaning", args.meaning), ("trained_on", args.trained_on)) if v}
    if changes:
        converted = Head(replace(head.config, **changes))
        converted.load_state_dict(head.state_dict())
        head = converted
    folder = save_head(head, args.out)
    config = head.config
    print(
        f"clipbeam convert-head: {config.source or 'clipbeam'} head, {config.embedding_dim}-dim "
        f"input, {len(config.layers)} layers, {config.output} output -> {folder}"
    )
    return 0
