"""Measuring a model and a run: features, protocols, logs and plots.

Imports ``data`` and ``model``; not ``train`` or ``transfer``.
"""
