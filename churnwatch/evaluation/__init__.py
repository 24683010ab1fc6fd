"""Honest evaluation of churnwatch on an operator's data (issue 16): ``docs/evaluation.md``.

``stats``: AUC, bootstrap intervals, calibration; ``figures``: the per-subscriber
figures of a backtest replay; ``coverage``: which table columns reach which
features; ``baseline``: the raw-table models; ``table``: ``churnwatch
evaluate-table``; ``page``: its HTML report.
"""
