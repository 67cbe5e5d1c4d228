"""The report: the paper's tables, the summary page and the figures, made from the files the
workflow wrote, and the command lines of its verbs (cli). Nothing that builds the DAG imports
this package (tests/test_structure.py)."""
