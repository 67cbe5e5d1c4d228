"""Scoring: the max vote inside each object (voting), metrics, a run's evaluation, and the
cross-validation tables (crossval, crossval_objects); the command lines of its verbs (cli)."""
