"""Datasets by name (registry), the built-in ones, splits, corruptions and drift streams.

Importing the package registers the built-in datasets (``edgeadapt.data.builtin``) into the
registry (``edgeadapt.data.registry``), which itself imports nothing of them: no import cycle, and
no lookup can run before the built-ins are there.
"""

from edgeadapt.data import builtin as builtin  # registers the built-in datasets
