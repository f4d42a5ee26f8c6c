"""Real-time streaming of a causal one-step generator (AAPT): static buffers, a graphable step per frame.

``StreamStep`` runs ``autoregressive.next_frame`` over a ``StaticLatteCache`` (the fixed-size ring buffer),
its inputs (noise, recycled frame, label) in buffers of fixed address, so the step can run eagerly, through
``torch.compile`` and/or replayed as one CUDA graph; ``FrameDecoder`` does the same for decoding each latent
frame to uint8 pixels. ``stream.py`` and ``bench/stream_latency.py`` are built on these two, so what the bench
times is what a user streams. Both run under ``torch.no_grad()``.
"""

from collections.abc import Callable

import torch
from torch import nn

from diffusion.autoregressive import next_frame
from diffusion.objective import Objective
from utils.video import to_uint8

COMPILE_MODES = (None, "default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


class StaticCall:
    """``fn()`` over buffers of fixed address: eager, ``torch.compile``d with ``compile`` and/or a CUDA graph.

    ``static``: the tensors ``fn`` reads and writes in place, marked as static inputs for compile's own
    CUDA graphs (``reduce-overhead``). With ``cuda_graph`` (CUDA only) ``fn`` runs ``warmup`` times on a side
    stream, is captured once, and each call replays the graph: ``fn``'s effects must be its in-place writes.
    """

    def __init__(
        self,
        fn: Callable[[], None],
        compile: str | None = None,
        cuda_graph: bool = False,
        warmup: int = 3,
        static: tuple[torch.Tensor, ...] = (),
    ):
        if compile not in COMPILE_MODES:
            raise ValueError(f"compile={compile!r} must be one of {COMPILE_MODES}")
        if cuda_graph and not all(t.is_cuda for t in static):
            raise ValueError("cuda_graph=true needs a CUDA device: the buffers are not on one")
        if cuda_graph and compile == "reduce-overhead":
            raise ValueError("compile='reduce-overhead' makes its own CUDA graphs: leave cuda_graph=false")
        if compile == "reduce-overhead":
            for tensor in static:
                torch._dynamo.mark_static_address(tensor)
        self.fn = fn if compile is None else torch.compile(fn, mode=None if compile == "default" else compile)
        self.graph = None
        if cuda_graph:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(warmup):
                    self.fn()
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.fn()
        elif compile is not None:
            for _ in range(warmup):  # compile (and record compile's graphs) now, not in the first frames
                self.fn()

    def __call__(self) -> None:
        """Run ``fn`` once (a graph replay when captured)."""
        if self.graph is not None:
            self.graph.replay()
        else:
            self.fn()


class StreamStep:
    """One latent frame per call of a causal one-step generator, over a static KV cache and static inputs.

    ``start(first, y)`` begins a stream at the frame ``first`` (b, 1, c, h, w); each ``step(noise, y)``
    returns the next frame (b, 1, c, h, w), in a buffer that the next call overwrites (clone it to keep it).
    ``y`` (b,) changes the class from this frame on (None: keep the current one). The generator's dtype is
    the stream's (cast it to bf16 for bf16 inference).
    """

    def __init__(
        self,
        model: nn.Module,
        objective: Objective,
        batch_size: int,
        frame_shape: tuple[int, int, int],
        compile: str | None = None,
        cuda_graph: bool = False,
        warmup: int = 3,
    ):
        self.model, self.objective = model, objective
        weight = next(model.parameters())
        shape = (batch_size, 1, *frame_shape)
        self.previous = torch.zeros(shape, dtype=weight.dtype, device=weight.device)  # the recycled frame
        self.noise = torch.zeros_like(self.previous)  # (b, 1, c, h, w)
        classes = getattr(model, "num_classes", 0)
        self.y = torch.zeros(batch_size, dtype=torch.long, device=weight.device) if classes else None  # (b,)
        self.cache = model.new_cache(batch_size, static=True)
        with torch.no_grad():
            self._step()  # an eager step allocates the cache's K/V buffers before anything is captured
            static = (self.previous, self.noise, *self.cache.buffers())
            self.call = StaticCall(
                self._step, compile, cuda_graph, warmup, static + (() if self.y is None else (self.y,))
            )
        self.cache.reset()

    @property
    def frames(self) -> int:
        """Frames generated since ``start`` (reads the device counter: a host sync)."""
        return int(self.cache.frame.item())

    def _step(self) -> None:
        """The next frame from the buffers, written into ``previous`` (recycled by the next step)."""
        frame = next_frame(self.model, self.objective, self.cache, self.previous, self.noise, self.y)
        self.previous.copy_(frame)  # (b, 1, c, h, w)

    def set_label(self, y: torch.Tensor | int) -> None:
        """Condition the next frames on class ``y`` (an int for every video, or (b,))."""
        if self.y is None:
            raise ValueError("the generator is unconditional (num_classes=0): it takes no class label")
        self.y.copy_(torch.as_tensor(y, dtype=torch.long).expand_as(self.y))

    def start(self, first: torch.Tensor, y: torch.Tensor | int | None = None) -> None:
        """Empty the cache and begin the stream at ``first`` (b, 1, c, h, w)."""
        assert first.shape == self.previous.shape, (
            f"the first frame must be (b, 1, c, h, w) = {tuple(self.previous.shape)}, got "
            f"{tuple(first.shape)}"
        )
        self.cache.reset()
        self.previous.copy_(first)
        if y is not None:
            self.set_label(y)

    @torch.no_grad()
    def step(self, noise: torch.Tensor, y: torch.Tensor | int | None = None) -> torch.Tensor:
        """The next frame (b, 1, c, h, w) from its noise (b, 1, c, h, w); ``y`` switches the class first."""
        if y is not None:
            self.set_label(y)
        self.noise.copy_(noise)
        self.call()
        return self.previous


class FrameDecoder:
    """Decode one latent frame per call to uint8 pixels (b, H, W, 3): eager, compiled and/or a CUDA graph.

    ``autoencoder`` follows the framework's contract (``decode`` of (b, f, c, h, w)); ``dtype`` and
    ``channels_last`` are applied to it (None: as it is).
    """

    def __init__(
        self,
        autoencoder: nn.Module,
        latent: torch.Tensor,
        dtype: torch.dtype | None = None,
        channels_last: bool = False,
        compile: str | None = None,
        cuda_graph: bool = False,
        warmup: int = 3,
    ):
        assert latent.ndim == 5 and latent.shape[1] == 1, (
            f"latent must be (b, 1, c, h, w), got {tuple(latent.shape)}"
        )
        if dtype is not None:
            autoencoder.to(dtype)
        if channels_last:
            autoencoder.to(memory_format=torch.channels_last)
        self.autoencoder = autoencoder
        self.latent = torch.zeros_like(latent, dtype=dtype or latent.dtype)  # (b, 1, c, h, w)
        with torch.no_grad():
            self.pixels = self._pixels()  # (b, H, W, 3) uint8
            self.call = StaticCall(self._decode, compile, cuda_graph, warmup, (self.latent, self.pixels))

    def _pixels(self) -> torch.Tensor:
        """uint8 pixels (b, H, W, 3) of the latent buffer."""
        video = to_uint8(self.autoencoder.decode(self.latent))  # (b, 1, 3, H, W)
        return video[:, 0].permute(0, 2, 3, 1)  # (b, H, W, 3)

    def _decode(self) -> None:
        """Decode the latent buffer into the pixel buffer."""
        self.pixels.copy_(self._pixels())

    @torch.no_grad()
    def __call__(self, latent: torch.Tensor) -> torch.Tensor:
        """uint8 pixels (b, H, W, 3) of one latent frame (b, 1, c, h, w); the buffer is reused next call."""
        self.latent.copy_(latent)
        self.call()
        return self.pixels


@torch.no_grad()
def stream_videos(
    model: nn.Module,
    objective: Objective,
    autoencoder: nn.Module,
    first: torch.Tensor,
    num_frames: int,
    head: int,
    tail: int,
    generator: torch.Generator | None = None,
    y: torch.Tensor | None = None,
) -> torch.Tensor:
    """The first ``head`` and the last ``tail`` of ``num_frames`` streamed frames, as pixels in [-1, 1].

    ``first`` (b, 1, 3, H, W): the pixel frames the streams start from (not part of the output). Only the
    kept frames are decoded; all of them when head + tail >= num_frames. Returns (b, min(num_frames,
    head + tail), 3, H, W): what a `MetricSuite` with first-``head`` and last-``tail`` views reads.
    """
    assert first.ndim == 5 and first.shape[1] == 1, f"first must be (b, 1, 3, H, W), got {tuple(first.shape)}"
    dtype = next(model.parameters()).dtype
    latent = autoencoder.encode(first).to(dtype)  # (b, 1, c, h, w)
    step = StreamStep(model, objective, first.shape[0], tuple(latent.shape[2:]))
    step.start(latent, y)
    kept = []  # (b, 1, c, h, w) latents of the frames kept
    for k in range(num_frames):
        noise = torch.randn(latent.shape, generator=generator, device=latent.device, dtype=dtype)
        frame = step.step(noise)  # (b, 1, c, h, w)
        if k < head or k >= num_frames - tail:
            kept.append(frame.clone())
    return autoencoder.decode(torch.cat(kept, dim=1).float()).clamp(-1, 1)  # (b, kept, 3, H, W)


class DecodeAhead:
    """Decode each frame on a second CUDA stream while the next step runs; the host gets it one step late.

    ``push(latent)`` queues the decode of one latent frame (b, 1, c, h, w) and returns the frames that are
    ready, uint8 (b, H, W, 3) on the host: on CUDA the previous frame (none at the first push), elsewhere this
    one (decoded at once). ``finish()`` returns the rest. A returned buffer is reused two pushes later.
    """

    def __init__(self, decoder: FrameDecoder):
        self.decoder, self.pushed = decoder, 0
        self.cuda = decoder.latent.is_cuda
        if self.cuda:
            self.side = torch.cuda.Stream(decoder.latent.device)
            shape = decoder.pixels.shape  # (b, H, W, 3)
            self.host = [torch.empty(shape, dtype=torch.uint8, pin_memory=True) for _ in range(2)]
            self.made, self.copied = torch.cuda.Event(), torch.cuda.Event()
            self.decoded = [torch.cuda.Event(), torch.cuda.Event()]

    def push(self, latent: torch.Tensor) -> list[torch.Tensor]:
        """Queue the decode of ``latent`` (b, 1, c, h, w); the frames now on the host, (b, H, W, 3) each."""
        if not self.cuda:
            return [self.decoder(latent).cpu()]
        slot = self.pushed % 2
        self.made.record()
        with torch.cuda.stream(self.side):
            self.side.wait_event(self.made)  # the step has made the frame
            self.decoder.latent.copy_(latent)
            self.copied.record(self.side)
            self.decoder.call()
            self.host[slot].copy_(self.decoder.pixels, non_blocking=True)
            self.decoded[slot].record(self.side)
        torch.cuda.current_stream().wait_event(
            self.copied
        )  # the next step overwrites `latent` after the copy
        self.pushed += 1
        return [] if self.pushed == 1 else [self._take(self.pushed - 2)]

    def finish(self) -> list[torch.Tensor]:
        """The frames still on their way to the host."""
        return [self._take(self.pushed - 1)] if self.cuda and self.pushed else []

    def _take(self, index: int) -> torch.Tensor:
        """Push number ``index``'s frame, once on the host."""
        self.decoded[index % 2].synchronize()
        return self.host[index % 2]
