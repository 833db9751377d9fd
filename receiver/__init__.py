"""The edge receiver: playout, keypoint prediction, synthesis, video to viewers (streaming issue)."""
