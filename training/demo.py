"""``kpvid-demo``: the end-to-end model demo on shipped weights and a freshly generated clip.

Generates a synthetic talking-head clip, detects keypoints on every frame, rebuilds every frame
from the first one and those keypoints, writes a side-by-side mp4 and prints the scores.
"""

from __future__ import annotations

import argparse
import logging
import time
from pathlib import Path

import torch

from kpvid.models import SHIPPED_CHECKPOINT, frame_size, load_checkpoint_with_config
from kpvid.training.evaluate import reconstruct_video, score_video, write_side_by_side
from kpvid.training.synthetic import generate_video

log = logging.getLogger("kpvid.demo")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="kpvid-demo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--checkpoint", type=Path, default=SHIPPED_CHECKPOINT,
                        help="FOMM checkpoint (default: the shipped one)")
    parser.add_argument("--seed", type=int, default=2026,
                        help="seed of the synthetic clip (default: 2026, never used in training)")
    parser.add_argument("--frames", type=int, default=64, help="clip length (default: 64)")
    parser.add_argument("--out", type=Path, default=Path("out/demo.mp4"),
                        help="side-by-side video to write (default: out/demo.mp4)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")

    kp_detector, generator, config = load_checkpoint_with_config(args.checkpoint)
    size = frame_size(config)
    clip = generate_video("faces", seed=args.seed, size=size, frames=args.frames)
    frames = torch.from_numpy(clip).permute(0, 3, 1, 2).float().div(255)

    scores, rebuilt, keypoints = score_video(kp_detector, generator, "demo", frames)
    started = time.perf_counter()
    reconstruct_video(kp_detector, generator, frames, batch_size=1)
    per_frame_ms = (time.perf_counter() - started) * 1000 / len(frames)
    write_side_by_side(args.out, frames, rebuilt, keypoints)

    print(f"clip: {len(frames)} frames of {size}x{size} (synthetic faces, seed {args.seed})")
    print(f"rebuilt from frame 0 + keypoints: PSNR {scores.psnr:.2f} dB, SSIM {scores.ssim:.3f}, "
          f"L1 {scores.l1:.4f}")
    print(f"keypoints + synthesis, one frame at a time: {per_frame_ms:.1f} ms/frame "
          f"({1000 / per_frame_ms:.0f} fps) on {torch.get_num_threads()} CPU threads")
    print(f"side by side (driving with keypoints | rebuilt): {args.out}")
    return 0
