"""Edge receiver: jitter buffer, playout, keypoint prediction, synthesis, video to viewers."""
