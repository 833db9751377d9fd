"""The sender: capture, keypoint detection on observed frames, keypoint packets (streaming issue)."""
