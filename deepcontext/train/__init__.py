"""Training: the Trainer, its statistics, control files, snapshots and log.

Imports ``data`` and ``model``; not ``transfer`` or ``eval``.
"""
