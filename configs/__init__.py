"""Experiment configs (ml-collections); one file per row of the paper's tables."""
