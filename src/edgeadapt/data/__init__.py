"""Built-in offline data: scikit-learn digits and Python's bundled documentation text."""
