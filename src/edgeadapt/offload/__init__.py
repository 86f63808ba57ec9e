"""Split and offload: a model as a chain of blocks with descendants at several widths
(:mod:`~edgeadapt.offload.blocks`), their profiles (:mod:`~edgeadapt.offload.profile`) and the
integer program placing one descendant per block on one device each (:mod:`~edgeadapt.offload.placement`)."""
