"""Experiments: a YAML spec -> a grid of runs -> results.csv -> a report with tables and figures.

Runs go locally, in worker processes or on Ray; the report holds the studies' tables and figures.
"""
