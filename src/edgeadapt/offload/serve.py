"""The cloud (or helper-device) side of split inference: a gRPC server that runs blocks of a chain.

``edgeadapt offload serve --model M --host H --port P --token-file F`` loads model ``M`` as a
:class:`RuntimeChain` and answers four raw-bytes methods of :data:`~edgeadapt.offload.transport.SERVICE`
(generic handlers; no generated code):

- ``Run``: a frame with fields ``{"start": K, "end": E}`` and the activation entering block ``K``
  → a frame with the output of block ``E - 1`` and ``{"compute_ms": ...}``;
- ``Ping``: empty → empty (round-trip time);
- ``Echo``: any bytes → the same bytes (bandwidth on a real transfer);
- ``Info``: empty → JSON ``{"model", "blocks", "names", "weights_hash"}`` (the edge checks it runs
  the same weights).

Every call must carry the device token (:func:`~edgeadapt.offload.transport.check_token`); a bad
frame or token is answered with its gRPC status and the server keeps serving. ``SIGTERM``/``SIGINT``
stop it gracefully (in-flight calls get :data:`SHUTDOWN_GRACE_S` seconds).
"""

from __future__ import annotations

import json
import logging
import signal
import threading
import time
from collections.abc import Callable
from concurrent import futures
from dataclasses import dataclass
from typing import Any

import grpc
import torch
from torch import nn

from edgeadapt.errors import ConfigError
from edgeadapt.models.adapter import weights_hash
from edgeadapt.models.cnn import CNNAdapter
from edgeadapt.offload.transport import (
    DEFAULT_MAX_FRAME_BYTES,
    SERVICE,
    FrameError,
    FrameSpec,
    check_token,
    decode_frame,
    encode_frame,
    parse_header,
)
from edgeadapt.pruning.checkpoint import load_model

log = logging.getLogger(__name__)

SHUTDOWN_GRACE_S = 5.0
"""Seconds in-flight calls get to finish after SIGTERM/SIGINT."""


class RuntimeChain:
    """A model as an ordered chain of blocks, each ``block(hidden) -> hidden`` on one tensor; the
    last block ends in logits. ``run(start, end, x)`` runs blocks ``[start, end)`` under a lock (calls
    arrive on several server threads). What the runtime needs of a chain, and no more: the blocks of
    :mod:`edgeadapt.offload.blocks` (``block_chain(adapter).blocks``) fit it as they are.

    ``input_shapes[i]`` is the shape (without the batch) entering block ``i``, found by one dummy
    forward of ``example`` (a batch of one input); ``input_shapes[n]`` is the logits' shape."""

    def __init__(self, name: str, blocks: list[nn.Module], names: list[str], example: torch.Tensor,
                 weights: str) -> None:
        self.name, self.blocks, self.names, self.weights_hash = name, blocks, names, weights
        self.lock = threading.Lock()  # one forward at a time: modules are not re-entrant under every backend
        shapes = [tuple(example.shape[1:])]
        x = example
        with torch.inference_mode():
            for block in blocks:
                x = block(x)
                shapes.append(tuple(x.shape[1:]))
        self.input_shapes: list[tuple[int, ...]] = shapes

    def __len__(self) -> int:
        return len(self.blocks)

    def check_range(self, start: int, end: int) -> None:
        """Raise :class:`ConfigError` unless ``0 <= start <= end <= len(self)``."""
        if not (isinstance(start, int) and isinstance(end, int) and 0 <= start <= end <= len(self)):
            raise ConfigError(f"block range [{start}, {end}) is not within the chain's {len(self)} blocks")

    def run(self, start: int, end: int, x: torch.Tensor) -> torch.Tensor:
        """Blocks ``[start, end)`` applied to ``x`` (``[B, *input_shapes[start]]``), no autograd."""
        self.check_range(start, end)
        with self.lock, torch.inference_mode():
            for block in self.blocks[start:end]:
                x = block(x)
        return x


class _CNNHead(nn.Module):
    """Pooling, flattening and the classifier of a transformers CNN classifier (dropout is the
    identity in eval mode)."""

    def __init__(self, pooler: nn.Module, classifier: nn.Module) -> None:
        super().__init__()
        self.pooler, self.classifier = pooler, classifier

    def forward(self, hidden: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.pooler(hidden), 1))


def _chain_from_adapter(adapter: Any, name: str) -> RuntimeChain:
    """The CNN's stages (:meth:`CNNAdapter.stages`) then its head as one last block.

    TODO(offload.blocks): build from ``edgeadapt.offload.blocks.block_chain(adapter)`` (its
    ``names`` and ``blocks``) now that it has landed — transformer layers too, and a descendant
    chain at chosen widths (``Descendants.chain(widths)``) for placement-driven runs."""
    if not isinstance(adapter, CNNAdapter):
        raise ConfigError(f"offload: {name!r} is not a CNN; the runtime splits CNN stages for now "
                          "(tiny-resnet, tiny-regnet, tiny-mobilenetv2, tiny-mobilevit or a trained one)")
    model = adapter.model.eval()
    paths = adapter.stages()
    prefix = getattr(model, "base_model_prefix", "")
    base = getattr(model, prefix) if prefix and hasattr(model, prefix) else model
    pooler = getattr(base, "pooler", None)
    if pooler is None and adapter.family == "mobilevit":  # its forward averages the last feature map
        pooler = nn.AdaptiveAvgPool2d(1)
    if not isinstance(pooler, nn.Module) or not isinstance(getattr(model, "classifier", None), nn.Module):
        raise ConfigError(f"offload: {name!r} has no pooler + classifier head to split after")
    blocks = [model.get_submodule(p) for p in paths] + [_CNNHead(pooler, model.classifier)]
    size = int(adapter.config.image_size)
    example = torch.zeros(1, int(adapter.config.num_channels), size, size)
    return RuntimeChain(name, blocks, [*paths, "head"], example, weights_hash(model))


def load_chain(model: str | CNNAdapter) -> RuntimeChain:
    """Model ``model`` (a built-in name, a local HF directory, an edgeadapt model artifact, or an
    adapter already loaded) as a :class:`RuntimeChain` on the CPU, sharing the adapter's modules. The
    one place the runtime gets its chain from."""
    adapter = model if isinstance(model, CNNAdapter) else load_model(model)
    adapter.model.cpu().eval()
    return _chain_from_adapter(adapter, adapter.name if isinstance(model, CNNAdapter) else str(model))


@dataclass(frozen=True)
class ServeConfig:
    """How the server listens and what it accepts."""

    host: str = "127.0.0.1"
    """Interface to bind; ``0.0.0.0`` for every interface."""
    port: int = 0
    """TCP port; 0 picks a free one (see :attr:`RunningServer.port`)."""
    max_frame_bytes: int = DEFAULT_MAX_FRAME_BYTES
    """Largest request accepted; larger ones get ``RESOURCE_EXHAUSTED``."""
    max_batch: int = 4096
    """Largest batch in one ``Run``."""
    workers: int = 4
    """Threads answering calls (compute itself is serialised by the chain's lock)."""


class ChainServicer:
    """The four methods over one :class:`RuntimeChain`, each refusing a bad token or frame with its
    gRPC status (never letting an exception take the server down)."""

    def __init__(self, chain: RuntimeChain, token: bytes, cfg: ServeConfig) -> None:
        self.chain, self.token, self.cfg = chain, token, cfg
        self.served = 0
        self.refused = 0

    def _guard(self, fn: Callable[[bytes, grpc.ServicerContext], bytes]
               ) -> Callable[[bytes, grpc.ServicerContext], bytes]:
        def call(request: bytes, context: grpc.ServicerContext) -> bytes:
            try:
                check_token(context.invocation_metadata(), self.token)
                out = fn(request, context)
            except FrameError as exc:
                self.refused += 1
                context.abort(exc.code, str(exc))
            except ConfigError as exc:
                self.refused += 1
                context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(exc))
            except Exception as exc:  # a bug: logged with its traceback, answered, and the server goes on
                log.exception("offload serve: %s failed", fn.__name__)
                context.abort(grpc.StatusCode.INTERNAL, f"{type(exc).__name__}: {exc}")
            self.served += 1
            return out
        return call

    def run(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        _, _, fields = parse_header(request, self.cfg.max_frame_bytes)
        start, end = fields.get("start"), fields.get("end", len(self.chain))
        self.chain.check_range(start, end)
        shape = self.chain.input_shapes[start]
        spec = FrameSpec(rank=len(shape) + 1, trailing=shape, max_batch=self.cfg.max_batch,
                         max_bytes=self.cfg.max_frame_bytes)
        x, _ = decode_frame(request, spec)
        if not context.is_active():  # the edge gave up while the frame was in flight
            return b""
        t0 = time.perf_counter()
        y = self.chain.run(start, end, x.float())
        return encode_frame(y, {"compute_ms": (time.perf_counter() - t0) * 1e3})

    def ping(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        return b""

    def echo(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        return request

    def info(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        c = self.chain
        return json.dumps({"model": c.name, "blocks": len(c), "names": c.names,
                           "weights_hash": c.weights_hash}).encode()

    def handler(self) -> grpc.GenericRpcHandler:
        """The generic raw-bytes handler (no serializers: requests and responses are ``bytes``)."""
        methods = {"Run": self.run, "Ping": self.ping, "Echo": self.echo, "Info": self.info}
        return grpc.method_handlers_generic_handler(SERVICE, {
            name: grpc.unary_unary_rpc_method_handler(self._guard(fn)) for name, fn in methods.items()})


@dataclass
class RunningServer:
    """A started server: its bound ``port``, the servicer (counters) and :meth:`stop`."""

    server: grpc.Server
    port: int
    servicer: ChainServicer

    def stop(self, grace: float | None = SHUTDOWN_GRACE_S) -> None:
        """Stop accepting calls and wait for in-flight ones up to ``grace`` seconds."""
        self.server.stop(grace).wait()


def start_server(chain: RuntimeChain, token: bytes, cfg: ServeConfig = ServeConfig()) -> RunningServer:
    """Start serving ``chain`` in background threads; returns at once. Raises :class:`ConfigError`
    when ``cfg.host:cfg.port`` cannot be bound."""
    if not token:
        raise ConfigError("offload serve: the device token is empty")
    servicer = ChainServicer(chain, token, cfg)
    options = [("grpc.max_receive_message_length", cfg.max_frame_bytes),
               ("grpc.max_send_message_length", cfg.max_frame_bytes)]
    server = grpc.server(futures.ThreadPoolExecutor(max_workers=cfg.workers), options=options)
    server.add_generic_rpc_handlers((servicer.handler(),))
    try:
        port = server.add_insecure_port(f"{cfg.host}:{cfg.port}")
    except RuntimeError as exc:
        raise ConfigError(f"offload serve: cannot listen on {cfg.host}:{cfg.port} ({exc})") from None
    if port == 0:
        raise ConfigError(f"offload serve: cannot listen on {cfg.host}:{cfg.port} (in use or not an "
                          "address of this machine)")
    server.start()
    return RunningServer(server, port, servicer)


def serve(model: str, token: bytes, cfg: ServeConfig = ServeConfig(),
          ready: Callable[[RunningServer], None] | None = None) -> int:
    """Serve ``model`` until SIGTERM or SIGINT, then stop gracefully; returns the number of calls
    served. ``ready`` is called once the port is bound (the CLI prints it). Must run in the main
    thread (signal handlers)."""
    chain = load_chain(model)
    running = start_server(chain, token, cfg)
    stop = threading.Event()
    previous = {s: signal.signal(s, lambda *_: stop.set()) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        if ready is not None:
            ready(running)
        while not stop.wait(0.5):
            pass
    finally:
        running.stop()
        for s, h in previous.items():
            signal.signal(s, h)
    return running.servicer.served
