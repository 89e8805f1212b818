"""The pipeline's stages, in the order an image goes through them. `process_image` times
each one (`ms_<stage>` in its metrics, and so in a job's metrics); with rounding, they add
up to `ms_total`. A module of its own, so that the API and the reports read it without
loading any engine."""

from __future__ import annotations

STAGES = ("decode", "detect", "remove", "gate", "encode", "residual")
