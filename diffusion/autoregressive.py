"""Autoregressive one-step generation (AAPT): one forward of a causal backbone per latent frame.

The backbone is a causal Latte whose input joins, on channels, the noise of the next frame and the
previous clean frame: ``[noise_k, frame_{k-1}]`` (b, 1, 2c, h, w). The user's first frame starts the chain,
so a stream of f frames after it costs f forwards. Each forward appends its temporal keys/values to the
backbone's KV cache (``model.new_cache``), which is how frame k sees frames < k. The generator always runs
at the objective's noise end (flow matching: t = 1) and its output is read as the clean frame through
``objective.to_x0`` (APT's G(z) = z - v(z, T)).

``rollout`` is the one loop that both inference (``stream.py``, the samplers of the callbacks) and AAPT's
student-forcing training run, so what the discriminator judges in training is what a user streams.
"""

from collections.abc import Callable

import torch

from diffusion.objective import Objective

Backbone = Callable[..., torch.Tensor]


def next_frame(
    model: Backbone,
    objective: Objective,
    cache,
    previous: torch.Tensor,
    noise: torch.Tensor,
    y: torch.Tensor | None = None,
) -> torch.Tensor:
    """The next clean frame (b, 1, c, h, w) from the previous one and its noise, both (b, 1, c, h, w)."""
    assert previous.ndim == 5 and previous.shape == noise.shape and previous.shape[1] == 1, (
        f"previous frame and noise must both be (b, 1, c, h, w), got {tuple(previous.shape)} and "
        f"{tuple(noise.shape)}"
    )
    t = torch.ones(noise.shape[0], device=noise.device)  # (b,): the noise end, one step to the data
    x = torch.cat([noise, previous], dim=2)  # (b, 1, 2c, h, w): the noise channels, then the recycled frame
    out = model(x, objective.model_timesteps(t), y, cache=cache)  # (b, 1, c, h, w)
    return objective.to_x0(out, noise, t)  # (b, 1, c, h, w)


def rollout(
    model: Backbone,
    objective: Objective,
    first: torch.Tensor,
    noise: torch.Tensor,
    y: torch.Tensor | None = None,
    cache=None,
    detach_recycled: bool = True,
) -> torch.Tensor:
    """Frames (b, f, c, h, w) after ``first`` (b, 1, c, h, w), one forward each, from noise (b, f, c, h, w).

    ``cache`` continues a stream (default: a new one starting at the first frame). Each generated frame is
    recycled as the next step's input, detached by default (AAPT's student forcing detaches it; gradients
    still reach earlier frames through the cached keys and values). Under ``torch.no_grad()`` this is
    inference.
    """
    assert first.ndim == 5 and first.shape[1] == 1, f"first must be (b, 1, c, h, w), got {tuple(first.shape)}"
    assert noise.ndim == 5 and noise.shape[2:] == first.shape[2:] and noise.shape[0] == first.shape[0], (
        f"noise (b, f, c, h, w) must match the first frame {tuple(first.shape)}, got {tuple(noise.shape)}"
    )
    cache = model.new_cache(first.shape[0]) if cache is None else cache
    frames, previous = [], first
    for k in range(noise.shape[1]):
        recycled = previous.detach() if detach_recycled else previous
        previous = next_frame(model, objective, cache, recycled, noise[:, k : k + 1], y)  # (b, 1, c, h, w)
        frames.append(previous)
    return torch.cat(frames, dim=1)  # (b, f, c, h, w)
