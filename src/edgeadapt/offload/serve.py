"""The cloud (or helper-device) side of split inference: a gRPC server that runs blocks of a chain.

``edgeadapt offload serve --model M --host H --port P --token-file F`` loads model ``M`` as a
:class:`RuntimeChain` (:func:`load_chain`: the blocks of :func:`~edgeadapt.offload.blocks.block_chain`
— CNN stages or ViT embeddings and layers, then a head — or, for a descendants artifact, every block
at every built width) and answers four raw-bytes methods of
:data:`~edgeadapt.offload.transport.SERVICE` (generic handlers; no generated code):

- ``Run``: a frame with fields ``{"start": K, "end": E, "widths": [...], "exit": X}`` (``widths``:
  one per block ``K..E-1``, optional, default full width; ``exit``: optional, then ``E = X + 1``) and
  the activation entering block ``K`` → a frame with the output of block ``E - 1`` — or, with
  ``exit``, the logits of the early-exit head after block ``X`` applied to it (``K = E = X + 1``
  runs the head alone) — and ``{"compute_ms": ...}``;
- ``Ping``: empty → empty (round-trip time);
- ``Echo``: any bytes → the same bytes (bandwidth on a real transfer);
- ``Info``: empty → JSON ``{"model", "blocks", "names", "widths", "weights_hash", "exits",
  "exits_hash"}`` (the edge checks it runs the same weights, and the same exit heads before it
  places a request's end at one; ``exits``: the blocks with an exit head, ``exits_hash``: their
  weights, ``null`` without).

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
from collections.abc import Callable, Sequence
from concurrent import futures
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc
import torch
from torch import nn

from edgeadapt.errors import ConfigError
from edgeadapt.models.adapter import weights_hash
from edgeadapt.numerics import upcast
from edgeadapt.offload.artifact import KIND as DESCENDANTS_KIND
from edgeadapt.offload.artifact import load_descendants, load_exit_heads
from edgeadapt.offload.blocks import Descendants, block_chain
from edgeadapt.offload.build import DESCENDANTS_DIR
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
    last block ends in logits. ``run(start, end, x, widths)`` runs blocks ``[start, end)``, each at
    its chosen width, under a lock (calls arrive on several server threads).

    ``blocks`` are the full-width blocks; ``variants[b][i]`` is block ``b`` at ``widths[i]`` (default:
    one width, 1.0, the block itself) — a descendants artifact gives every block at every built
    width, so one server can run any block at any width a placement picks. A descendant keeps its
    block's output shape, so ``input_shapes[i]`` (the shape without the batch entering block ``i``,
    found by one dummy forward of ``example``, a batch of one input; ``input_shapes[n]`` is the
    logits' shape) holds at every width. ``weights_hash`` identifies every variant's weights.

    ``exits[e]`` (optional) is the early-exit head after block ``e`` (one per block from the first;
    none after the last two): ``run(start, e + 1, x, widths, exit_block=e)`` ends in its logits,
    which must have the chain's logits shape (checked on the dummy forward). ``exits_hash``
    identifies their weights (``None`` without exits)."""

    def __init__(self, name: str, blocks: list[nn.Module], names: list[str], example: torch.Tensor,
                 weights: str, widths: Sequence[float] = (1.0,),
                 variants: list[list[nn.Module]] | None = None, exits: Sequence[nn.Module] = ()) -> None:
        self.name, self.blocks, self.names, self.weights_hash = name, blocks, names, weights
        self.widths = tuple(float(w) for w in widths)
        self.variants = variants if variants is not None else [[b] for b in blocks]
        if 1.0 not in self.widths or any(len(row) != len(self.widths) for row in self.variants) \
                or len(self.variants) != len(blocks):
            raise ConfigError(f"runtime chain {name!r}: every block needs one module per width "
                              f"{list(self.widths)} (1.0 included)")
        self.lock = threading.Lock()  # one forward at a time: modules are not re-entrant under every backend
        shapes = [tuple(example.shape[1:])]
        x = example
        outs = []
        with torch.inference_mode():
            for block in blocks:
                x = block(x)
                outs.append(x)
                shapes.append(tuple(x.shape[1:]))
        self.input_shapes: list[tuple[int, ...]] = shapes
        self.exits = list(exits)
        if len(self.exits) > max(0, len(blocks) - 2):
            raise ConfigError(f"runtime chain {name!r}: {len(self.exits)} exit heads for {len(blocks)} "
                              "blocks (at most one per block but the last two)")
        with torch.inference_mode():
            for e, head in enumerate(self.exits):
                head.eval()
                got = tuple(head(outs[e]).shape[1:])
                if got != shapes[-1]:
                    raise ConfigError(f"runtime chain {name!r}: the exit after block {e} gives {list(got)}, "
                                      f"not the chain's logits {list(shapes[-1])}")
        self.exits_hash: str | None = weights_hash(nn.ModuleList(self.exits)) if self.exits else None

    def __len__(self) -> int:
        return len(self.blocks)

    def check_range(self, start: int, end: int) -> None:
        """Raise :class:`ConfigError` unless ``0 <= start <= end <= len(self)``."""
        if not (isinstance(start, int) and isinstance(end, int) and 0 <= start <= end <= len(self)):
            raise ConfigError(f"block range [{start}, {end}) is not within the chain's {len(self)} blocks")

    def modules_for(self, start: int, end: int, widths: Sequence[float] | None = None,
                    exit_block: int | None = None) -> list[nn.Module]:
        """The modules of blocks ``[start, end)`` at ``widths`` (one per block; ``None`` = full width),
        then the exit head after block ``exit_block`` when given (``end`` must be ``exit_block + 1``).
        Raises :class:`ConfigError` for a bad range, a wrong count, a width not built (``true`` is not
        the width 1) or an exit this chain has not (or not right after ``end - 1``)."""
        self.check_range(start, end)
        head = []
        if exit_block is not None:
            if not (type(exit_block) is int and 0 <= exit_block < len(self.exits) and end == exit_block + 1):
                have = f"exits after blocks 0..{len(self.exits) - 1}" if self.exits else "no exits"
                raise ConfigError(f"exit {exit_block!r} after blocks [{start}, {end}): the chain has {have}, "
                                  "and an exit's block range must end right after it")
            head = [self.exits[exit_block]]
        if widths is None:
            return list(self.blocks[start:end]) + head
        if not isinstance(widths, (list, tuple)) or len(widths) != end - start \
                or not all(isinstance(w, (int, float)) and not isinstance(w, bool) and float(w) in self.widths
                           for w in widths):
            raise ConfigError(f"widths {widths!r} for blocks [{start}, {end}): give one width per block, "
                              f"each one of {list(self.widths)}")
        chosen = [self.variants[b][self.widths.index(float(w))] for b, w in zip(range(start, end), widths)]
        return chosen + head

    def run(self, start: int, end: int, x: torch.Tensor, widths: Sequence[float] | None = None,
            exit_block: int | None = None) -> torch.Tensor:
        """Blocks ``[start, end)`` at ``widths``, then the exit head after ``exit_block`` when given
        (see :meth:`modules_for`), applied to ``x`` (``[B, *input_shapes[start]]``), no autograd."""
        modules = self.modules_for(start, end, widths, exit_block)
        with self.lock, torch.inference_mode():
            for block in modules:
                x = block(x)
        return x


def _example(config: Any) -> torch.Tensor:
    """A batch of one zero image at the config's input size (``num_channels``, ``image_size``)."""
    size = int(config["image_size"] if isinstance(config, dict) else config.image_size)
    channels = int(config.get("num_channels", 3) if isinstance(config, dict) else config.num_channels)
    return torch.zeros(1, channels, size, size)


def chain_from_adapter(adapter: Any, name: str) -> RuntimeChain:
    """The adapter's :func:`~edgeadapt.offload.blocks.block_chain` (CNN stages or ViT embeddings and
    layers, then a head) as a one-width :class:`RuntimeChain` sharing its modules."""
    chain = block_chain(adapter)
    adapter.model.eval()
    return RuntimeChain(name, list(chain.blocks), chain.names, _example(adapter.config),
                        weights_hash(adapter.model))


def chain_from_descendants(desc: Descendants, name: str, exits: Sequence[nn.Module] = ()) -> RuntimeChain:
    """Every block of ``desc`` at every width, and the exit heads ``exits`` (``exits[e]`` after block
    ``e``), as a :class:`RuntimeChain`; its weights hash covers every variant (an edge and a server
    agree only when they loaded the same artifact), its exits hash the heads."""
    desc.eval()
    full = desc.widths.index(1.0)
    every = nn.ModuleList([m for row in desc.modules for m in row])
    return RuntimeChain(name, [row[full] for row in desc.modules], list(desc.names),
                        _example(desc.base_config), weights_hash(every), desc.widths, desc.modules, exits)


def descendants_dir(model: str | Path) -> Path | None:
    """The descendants artifact ``model`` names — the artifact directory itself or the
    :func:`~edgeadapt.offload.build.build_offload` output holding it — or ``None`` when it is not one."""
    path = Path(model)
    for candidate in (path, path / DESCENDANTS_DIR):
        manifest = candidate / "manifest.json"
        if manifest.is_file():
            try:
                kind = json.loads(manifest.read_text()).get("kind")
            except (json.JSONDecodeError, UnicodeDecodeError, AttributeError):
                continue
            if kind == DESCENDANTS_KIND:
                return candidate
    return None


def load_chain(model: str | Path | Any) -> RuntimeChain:
    """Model ``model`` as a :class:`RuntimeChain` on the CPU: a built-in name, a local HF directory or
    an edgeadapt model artifact (full width only), a descendants artifact (every block at every
    built width, and its exit heads when it has them; :func:`descendants_dir`), or an adapter
    already loaded (sharing its modules). The one place the runtime gets its chain from."""
    if not isinstance(model, (str, Path)):
        model.model.cpu().eval()
        return chain_from_adapter(model, model.name)
    directory = descendants_dir(model)
    if directory is not None:
        return chain_from_descendants(load_descendants(directory), str(model), load_exit_heads(directory))
    adapter = load_model(model)
    adapter.model.cpu().eval()
    upcast(adapter.model)  # a bf16/fp16 checkpoint runs in float32 on the CPU, as `offload build` makes it
    return chain_from_adapter(adapter, str(model))


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
        exit_block = fields.get("exit")
        self.chain.modules_for(start, end, fields.get("widths"), exit_block)  # checks range, widths, exit
        shape = self.chain.input_shapes[start]
        spec = FrameSpec(rank=len(shape) + 1, trailing=shape, max_batch=self.cfg.max_batch,
                         max_bytes=self.cfg.max_frame_bytes)
        x, _ = decode_frame(request, spec)
        if not context.is_active():  # the edge gave up while the frame was in flight
            return b""
        t0 = time.perf_counter()
        y = self.chain.run(start, end, x.float(), fields.get("widths"), exit_block)
        return encode_frame(y, {"compute_ms": (time.perf_counter() - t0) * 1e3})

    def ping(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        return b""

    def echo(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        return request

    def info(self, request: bytes, context: grpc.ServicerContext) -> bytes:
        c = self.chain
        return json.dumps({"model": c.name, "blocks": len(c), "names": c.names, "widths": list(c.widths),
                           "weights_hash": c.weights_hash, "exits": list(range(len(c.exits))),
                           "exits_hash": c.exits_hash}).encode()

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
