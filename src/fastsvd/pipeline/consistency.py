"""The multistep consistency sampler AnimateLCM-SVD-xt was distilled for, written from the math.

A consistency model ``f(x, sigma)`` maps a noisy sample at noise level ``sigma`` straight to its
clean estimate (Song et al., arXiv 2303.01469, Algorithm 1 and appendix C). Multistep sampling
alternates that jump with re-noising to the next, lower level:

    x_0 = z * sigma_0                                      (initial noise)
    d_i = f(x_i, sigma_i)                                  (the clean estimate)
    x_{i+1} = d_i + z_i * sigma_{i+1},  z_i ~ N(0, I)      (fresh noise between steps)

and the last estimate is the video's latents (the level after the last step is 0).

The levels are the Karras schedule (EDM, arXiv 2206.00364) over the 40 training steps,

    sigma(r) = (sigma_max^(1/rho) + r * (sigma_min^(1/rho) - sigma_max^(1/rho)))^rho,
    sigma_min 0.002, sigma_max 700, rho 7,

taken at the training steps ``r = k / 39`` for ``k = 0, s, 2s, ...`` with ``s = 40 // steps``
(AnimateLCM, arXiv 2402.00769, distils SVD-XT on this grid; one step is ``sigma_max`` alone).

``f`` is the U-Net under the EDM preconditioning SVD-XT itself uses (sigma_data 1): the input is
scaled by ``c_in = 1 / sqrt(sigma^2 + 1)``, the U-Net sees the time ``0.25 ln sigma``, and its
v-prediction ``F`` is turned into the estimate with the boundary-condition coefficients

    f = c_skip * x + c_out * F,  c_skip = 1 / (sigma^2 + 1),  c_out = -sigma / sqrt(sigma^2 + 1).

These are the consistency parameterisation of appendix C with its epsilon set to 0 and the sign
of SVD's v-prediction, as the AnimateLCM authors' sampler has them: ``c_skip -> 1`` and
``c_out -> 0`` as sigma -> 0, so ``f(x, 0) = x``, the boundary condition.
"""

from __future__ import annotations

import math

import torch
from diffusers.utils.torch_utils import randn_tensor

SIGMA_MIN = 0.002
SIGMA_MAX = 700.0
SIGMA_DATA = 1.0
RHO = 7.0
TRAIN_STEPS = 40


def karras_sigma(ramp: float) -> float:
    """The Karras noise level at ``ramp`` in [0, 1] (0: ``SIGMA_MAX``, 1: ``SIGMA_MIN``)."""
    hi, lo = SIGMA_MAX ** (1 / RHO), SIGMA_MIN ** (1 / RHO)
    return float((hi + ramp * (lo - hi)) ** RHO)


def sigmas_for(steps: int) -> list[float]:
    """The noise level of each of ``steps`` sampling steps, highest first."""
    if not 1 <= steps <= TRAIN_STEPS:
        raise ValueError(f"steps must be 1-{TRAIN_STEPS}, not {steps}")
    stride = TRAIN_STEPS // steps
    return [karras_sigma(k * stride / (TRAIN_STEPS - 1)) for k in range(steps)]


def boundary_scalings(sigma: float) -> tuple[float, float]:
    """``(c_skip, c_out)`` at ``sigma``: the estimate is ``c_skip * x + c_out * F(x)``."""
    c_skip = SIGMA_DATA**2 / (sigma**2 + SIGMA_DATA**2)
    c_out = -sigma * SIGMA_DATA / math.sqrt(sigma**2 + SIGMA_DATA**2)
    return c_skip, c_out


class ConsistencySampler:
    """The sampler, in the shape of a diffusers scheduler where the video loop needs one:
    ``set_timesteps`` / ``timesteps`` / ``init_noise_sigma`` / ``scale_model_input`` / ``step``.

    ``begin`` draws every step's fresh noise at once, from the request's generator, before the
    loop: the loop itself then needs nothing from the host.
    """

    order = 1  # one model call per step (diffusers' pipelines read it)

    def __init__(self) -> None:
        # x_0 = z * sqrt(sigma_max^2 + 1): the authors' scale; 700.0007 against sigma_max's 700
        self.init_noise_sigma = math.sqrt(SIGMA_MAX**2 + 1)
        self.sigmas: list[float] = []
        self.timesteps = torch.empty(0)
        self._noise: torch.Tensor | None = None
        self._index = 0

    def set_timesteps(
        self, num_inference_steps: int, device: str | torch.device | None = None
    ) -> None:
        self.sigmas = sigmas_for(num_inference_steps)
        times = [0.25 * math.log(sigma) for sigma in self.sigmas]  # what SVD's U-Net was fed
        self.timesteps = torch.tensor(times, dtype=torch.float32, device=device)
        self._noise = None
        self._index = 0

    def begin(self, sample: torch.Tensor, generator: torch.Generator) -> None:
        """Draw the noise between steps (one less than there are steps) after ``set_timesteps``;
        ``sample`` gives its shape, device and dtype. Without it ``step`` re-noises with zeros."""
        shape = (max(0, len(self.sigmas) - 1), *sample.shape)
        self._noise = randn_tensor(
            shape, generator=generator, device=sample.device, dtype=sample.dtype
        )
        self._index = 0

    def scale_model_input(self, sample: torch.Tensor, timestep: torch.Tensor) -> torch.Tensor:
        sigma = self.sigmas[self._index]
        return sample / math.sqrt(sigma**2 + SIGMA_DATA**2)

    def step(
        self, model_output: torch.Tensor, timestep: torch.Tensor, sample: torch.Tensor
    ) -> torch.Tensor:
        """The next sample: the clean estimate, re-noised to the next level (0 after the last)."""
        i = self._index
        c_skip, c_out = boundary_scalings(self.sigmas[i])
        denoised = c_skip * sample + c_out * model_output
        self._index += 1
        if i + 1 == len(self.sigmas):
            return denoised
        noise = self._noise[i] if self._noise is not None else torch.zeros_like(sample)
        return denoised + self.sigmas[i + 1] * noise
