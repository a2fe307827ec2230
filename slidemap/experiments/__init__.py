"""Experiments: a YAML spec -> a grid of runs (locally, in worker processes or on Ray) -> results.csv ->
a report with the studies' tables and figures."""
