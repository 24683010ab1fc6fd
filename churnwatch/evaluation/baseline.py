"""The raw-table baseline: what an analyst's own model makes of the table, without churnwatch.

Five-fold stratified cross-validated ROC AUC, on every row, of two
scikit-learn models on the table's own columns (every column except the
label, the subscriber id and the period column; see ``label_columns``):

- ``LogisticRegression`` (``max_iter=1000``) on standardised numbers with
  blanks replaced by the training fold's median, and one-hot categoricals;
- ``HistGradientBoostingClassifier`` with its defaults on the numbers as they
  are (it handles blanks itself) and one-hot categoricals.

A column is a number when every non-blank cell parses as one; otherwise it
is a category (a blank is a category of its own). A category column whose
values are mostly distinct (more than half the rows) is an identifier, not an
input, and is left out. The one-hot encoders know every category of the
whole table up front: category names are not labels, and unseen categories
in a test fold would otherwise be silently zero.

The label is the mapping's own: its ``churn`` event's ``when:`` read from each
row (a column, optionally through ``map``/``unmapped`` and ``yes_no``, as
the importer reads it). A mapping whose label needs more (a sum, bands, ...)
takes each row's label from the import by subscriber id; rows the import
rejected then have none and are left out (``rows_without_label``).
"""

from __future__ import annotations

import csv
import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from churnwatch.evaluation.coverage import id_columns, label_columns
from churnwatch.evaluation.stats import RESAMPLES, bootstrap_auc, roc_auc
from churnwatch.importer import (
    STANDARD_NO,
    STANDARD_YES,
    Derivation,
    ImportResult,
    LoadedMapping,
    MappingError,
)

ID_LIKE_SHARE = 0.5
"""A category column with more distinct values than this share of the rows is an identifier."""


@dataclass
class RawTable:
    """A table's header and rows (cells by column); ``malformed`` rows have the wrong width."""

    header: list[str]
    rows: list[dict[str, str]]
    malformed: set[int] = field(default_factory=set)  # 0-based indexes into rows


def read_table(path: Path, loaded: LoadedMapping) -> RawTable:
    """Read the CSV as the importer does (its dialect, header, blank lines skipped).

    Row ``i`` here is the importer's row number ``i + 1``.
    """
    spec = loaded.mapping.input
    try:
        handle = path.open(encoding=spec.encoding, newline="")
    except OSError as exc:
        raise MappingError(f"{path}: cannot read the table: {exc.strerror}") from exc
    with handle:
        reader = csv.reader(handle, delimiter=spec.delimiter)
        try:
            if spec.header:
                header = [c.strip() for c in next(reader, [])]
            else:
                header = list(spec.columns or [])
            table = RawTable(header, [])
            for cells in reader:
                if not cells:
                    continue
                if len(cells) != len(header):
                    table.malformed.add(len(table.rows))
                    table.rows.append({})
                    continue
                table.rows.append(dict(zip(header, cells, strict=True)))
        except (UnicodeDecodeError, csv.Error) as exc:
            raise MappingError(f"{path}: cannot read the table: {exc}") from exc
    return table


def _truthy(value: object) -> bool | None:
    if isinstance(value, bool):
        return value
    if isinstance(value, int | float):
        return value != 0
    text = str(value).strip()
    try:
        number = float(text)
    except ValueError:
        pass
    else:
        return number != 0 if math.isfinite(number) else None
    if text.lower() in STANDARD_YES:
        return True
    if text.lower() in STANDARD_NO:
        return False
    return None


_READABLE = frozenset({"column", "map", "unmapped", "yes_no"})


def _readable(d: Derivation) -> bool:
    # Only the forms read here exactly as the importer reads them: any other key
    # (a transform, a default, a new derivation) sends the label to the import.
    return d.column is not None and d.model_fields_set <= _READABLE


def _cell_label(d: Derivation, cell: str, blanks: frozenset[str]) -> bool | None:
    """The label one cell gives through ``d`` (a column with map / yes_no); None if unknown."""
    text = cell.strip()
    if not text or text in blanks:
        return None
    value: object = text
    if d.map is not None:
        if text in d.map:
            value = d.map[text]
        elif "unmapped" in d.model_fields_set:
            value = d.unmapped
        else:
            return None
        if value is None:
            return None
    if d.yes_no is not None:
        shown = ("true" if value else "false") if isinstance(value, bool) else str(value)
        shown = shown.strip().lower()
        if shown in (v.lower() for v in d.yes_no.yes):
            return True
        if d.yes_no.no is None or shown in (v.lower() for v in d.yes_no.no):
            return False
        return None
    return _truthy(value)


def _subscriber_id(loaded: LoadedMapping, row: dict[str, str], number: int) -> str | None:
    spec = loaded.mapping.subscriber_id
    if spec.column is None:
        return f"{spec.prefix}{number:0{spec.width}d}"
    cell = row.get(spec.column, "").strip()
    return spec.prefix + cell if cell else None


def row_labels(
    table: RawTable, loaded: LoadedMapping, imported: ImportResult | None
) -> tuple[list[bool | None], str]:
    """Each row's churn label (None: unknown) and how it was read (``when`` or ``import``)."""
    churns = [s for s in loaded.mapping.events if s.type == "churn"]
    when = churns[0].when if len(churns) == 1 else None
    blanks = frozenset(v.strip() for v in loaded.mapping.input.blank_values)
    if when is not None and _readable(when) and when.column is not None:
        column = when.column
        return [
            None if i in table.malformed else _cell_label(when, row[column], blanks)
            for i, row in enumerate(table.rows)
        ], "when"
    out: list[bool | None] = []
    for i, row in enumerate(table.rows):
        sid = None if i in table.malformed else _subscriber_id(loaded, row, i + 1)
        if imported is None or sid is None or sid not in imported.subscribers:
            out.append(None)
        else:
            out.append(sid in imported.churned)
    return out, "import"


def input_columns(table: RawTable, loaded: LoadedMapping) -> tuple[list[str], dict[str, str]]:
    """The baseline's inputs, and every column left out with why."""
    left_out: dict[str, str] = {}
    for c in sorted(label_columns(loaded)):
        left_out[c] = "label"
    for c in sorted(id_columns(loaded)):
        left_out.setdefault(c, "id")
    return [c for c in table.header if c not in left_out], left_out


def _as_float(values: Sequence[str], blanks: frozenset[str]) -> list[float] | None:
    out = []
    for v in values:
        text = v.strip()
        if not text or text in blanks:
            out.append(math.nan)
            continue
        try:
            number = float(text)
        except ValueError:
            return None
        out.append(number if math.isfinite(number) else math.nan)
    return out


def _to_float(a: Any) -> Any:
    return np.asarray(a, dtype=float)


def raw_baseline(
    table: RawTable,
    loaded: LoadedMapping,
    imported: ImportResult | None,
    *,
    seed: int,
    folds: int = 5,
    resamples: int = RESAMPLES,
) -> dict[str, Any]:
    """Cross-validate LR and HistGBM on the raw columns (``read_table``); AUCs, intervals, inputs.

    ``roc_auc``: the mean of the ``folds`` test-fold AUCs (it reproduces the
    reference figures of ../shared/README.md to 0.001); ``roc_auc_ci``: the
    bootstrap interval of the AUC of the pooled out-of-fold probabilities
    (resampling rows: subscribers), ``oof_roc_auc`` its point value.
    """
    if loaded.mapping.input.layout != "per_subscriber":
        return {"skipped": "the raw baseline needs one row per subscriber (per_subscriber layout)"}
    labels, source = row_labels(table, loaded, imported)
    keep = [i for i, label in enumerate(labels) if label is not None]
    columns, left_out = input_columns(table, loaded)
    y = np.asarray([labels[i] for i in keep], dtype=int)
    base = {
        "rows": len(table.rows),
        "rows_used": len(keep),
        "rows_without_label": len(table.rows) - len(keep),
        "label_from": source,
        "positives": int(y.sum()),
        "folds": folds,
        "seed": seed,
    }
    if len(set(y.tolist())) < 2 or min(int(y.sum()), int(len(y) - y.sum())) < folds:
        return {**base, "skipped": "too few rows of each class for the folds"}
    blanks = frozenset(v.strip() for v in loaded.mapping.input.blank_values)
    numeric: list[list[float]] = []
    numeric_names: list[str] = []
    categorical: list[list[str]] = []
    categorical_names: list[str] = []
    for c in columns:
        cells = [table.rows[i][c] for i in keep]
        as_numbers = _as_float(cells, blanks)
        if as_numbers is not None:
            numeric.append(as_numbers)
            numeric_names.append(c)
            continue
        values = [v.strip() if v.strip() not in blanks else "" for v in cells]
        if len(set(values)) > ID_LIKE_SHARE * len(values):
            left_out[c] = "identifier-like (mostly distinct values)"
            continue
        categorical.append(values)
        categorical_names.append(c)
    lr, gbm = _models(numeric, categorical, seed)
    x = np.empty((len(keep), len(numeric) + len(categorical)), dtype=object)
    inputs: list[Sequence[object]] = [*numeric, *categorical]
    for j, col in enumerate(inputs):
        x[:, j] = col
    out = {
        **base,
        "numeric_columns": numeric_names,
        "categorical_columns": categorical_names,
        "left_out": left_out,
    }
    from threadpoolctl import threadpool_limits  # type: ignore[import-untyped]

    # One OpenMP thread: on a busy 2-core machine HistGBM's threads spin against
    # each other (measured on mlc_churn: 47 s with the default threads, 3 s with
    # one); a table of a few thousand rows gains nothing from more.
    with threadpool_limits(limits=1, user_api="openmp"):
        for name, model in (("logistic_regression", lr), ("hist_gradient_boosting", gbm)):
            out[name] = _cross_validate(model, x, y, seed=seed, folds=folds, resamples=resamples)
    return out


def _models(numeric: list[list[float]], categorical: list[list[str]], seed: int) -> tuple[Any, Any]:
    from sklearn.compose import ColumnTransformer
    from sklearn.ensemble import HistGradientBoostingClassifier
    from sklearn.impute import SimpleImputer
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import Pipeline, make_pipeline
    from sklearn.preprocessing import FunctionTransformer, OneHotEncoder, StandardScaler

    num = list(range(len(numeric)))
    cat = list(range(len(numeric), len(numeric) + len(categorical)))
    categories = [sorted(set(col)) for col in categorical]
    as_float = FunctionTransformer(_to_float)

    def encoder() -> Any:
        return OneHotEncoder(categories=categories, sparse_output=False, handle_unknown="error")

    lr = Pipeline(
        [
            (
                "columns",
                ColumnTransformer(
                    [
                        (
                            "num",
                            make_pipeline(
                                as_float, SimpleImputer(strategy="median"), StandardScaler()
                            ),
                            num,
                        ),
                        ("cat", encoder(), cat),
                    ]
                ),
            ),
            ("model", LogisticRegression(max_iter=1000)),
        ]
    )
    gbm = Pipeline(
        [
            ("columns", ColumnTransformer([("num", as_float, num), ("cat", encoder(), cat)])),
            ("model", HistGradientBoostingClassifier(random_state=seed)),
        ]
    )
    return lr, gbm


def _cross_validate(
    model: Any, x: Any, y: Any, *, seed: int, folds: int, resamples: int
) -> dict[str, Any]:
    from sklearn.base import clone
    from sklearn.model_selection import StratifiedKFold

    oof = np.zeros(len(y))
    fold_aucs = []
    split = StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed)
    for train, test in split.split(x, y):
        fitted = clone(model).fit(x[train], y[train])
        oof[test] = fitted.predict_proba(x[test])[:, 1]
        auc = roc_auc(y[test].astype(bool).tolist(), oof[test].tolist())
        fold_aucs.append(auc if auc is not None else math.nan)
    yl = y.astype(bool).tolist()
    pl = oof.tolist()
    return {
        "roc_auc": float(np.nanmean(fold_aucs)),
        "fold_roc_auc": fold_aucs,
        "oof_roc_auc": roc_auc(yl, pl),
        "roc_auc_ci": bootstrap_auc(yl, pl, seed=seed, resamples=resamples),
    }
