"""Procedural synthetic video data sets (no downloads): talking heads and robot-arm pushing.

Every clip is a deterministic function of (domain, seed, size, frames); see `generate_video` and
`write_dataset`, which lays clips out like FOMM's data folders (train/ and test/).
"""

from .writer import DEFAULT_FRAMES, DOMAINS, generate_video, write_dataset

__all__ = ["DEFAULT_FRAMES", "DOMAINS", "generate_video", "write_dataset"]
