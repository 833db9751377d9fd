"""Sender side: capture, keypoint detection on observed frames, keypoint packets out."""
