"""The ``edgeadapt`` command line: a thin table over library functions."""
