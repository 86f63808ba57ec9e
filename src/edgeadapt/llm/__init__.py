"""Large language models: evaluation of dense and structurally pruned causal LMs."""
