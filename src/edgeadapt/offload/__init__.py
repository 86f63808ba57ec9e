"""Split and offload: a model as a chain of blocks with descendants at several widths
(:mod:`~edgeadapt.offload.blocks`, saved by :mod:`~edgeadapt.offload.artifact`), their profiles on
devices (:mod:`~edgeadapt.offload.profile`), the integer program placing one descendant per block on
one device each (:mod:`~edgeadapt.offload.placement`), the baselines costed by the same model
(edge-only, cloud-only, Neurosurgeon, BranchyNet-style early exits: :mod:`~edgeadapt.offload.baselines`),
:mod:`~edgeadapt.offload.build` for all of it in one call, an application token bucket and tc/tbf
network namespaces for emulation (:mod:`~edgeadapt.offload.netem`), and the runtime that serves and
runs a split chain over gRPC
(:mod:`~edgeadapt.offload.transport`, :mod:`~edgeadapt.offload.serve`, :mod:`~edgeadapt.offload.client`,
:mod:`~edgeadapt.offload.run`)."""
