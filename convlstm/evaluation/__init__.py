"""Scoring predictions: metrics in the published tables' conventions (metrics) and the figures (plots)."""
