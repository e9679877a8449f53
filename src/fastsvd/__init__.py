"""fastsvd: self-hosted, fal-compatible text-to-video with Stable Video Diffusion XT."""

__version__ = "0.1.0"
