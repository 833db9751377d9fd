"""FOMM keypoints computed from MediaPipe FaceMesh landmarks instead of a learned detector.

The K keypoint values are K anchor landmarks (eye corners, nose tip, mouth corners, inner lips,
chin, cheeks). Each jacobian is the least-squares affine map from the anchor's neighbourhood on a
reference face to the same landmarks in the frame: the local affine transform FOMM's detector
learns to predict, here measured. Only J_source J_driving^-1 reaches the dense motion network,
so the reference face cancels up to its non-affine shape; any near-frontal face does.

The module holds no weights, only buffers (anchor and neighbour indices and the reference's
pseudo-inverses), so a checkpoint of a FaceMesh-driven model carries its own geometry in the
``kp_detector`` entry of the official layout.
"""

from __future__ import annotations

from collections.abc import Collection, Sequence

import numpy as np
import torch
from torch import nn

from .facemesh import FaceMesh


class MeshKeypoints(nn.Module):
    """{"value": B x K x 2, "jacobian": B x K x 2 x 2} from B x L x 2 landmarks in the keypoints'
    [-1, 1] coordinates (x right, y down)."""

    def __init__(self, num_kp: int = 10, neighbours: int = 12, landmarks: int = 468) -> None:
        super().__init__()
        if num_kp < 1 or neighbours < 3:
            raise ValueError(f"need num_kp >= 1 and neighbours >= 3, got {num_kp}, {neighbours}")
        self.num_kp = num_kp
        # the reference face, also what a detector reports before it has found a face
        self.register_buffer("reference", torch.zeros(landmarks, 2))
        self.register_buffer("anchors", torch.zeros(num_kp, dtype=torch.long))
        self.register_buffer("neighbours", torch.zeros(num_kp, neighbours, dtype=torch.long))
        self.register_buffer("pinv", torch.zeros(num_kp, neighbours, 2))

    def set_reference(self, reference: np.ndarray, anchors: Sequence[int],
                      exclude: Sequence[Collection[int]] | None = None) -> None:
        """Take the geometry from a reference face's L x 2 landmarks: each anchor's neighbourhood
        is its nearest landmarks (itself included) outside ``exclude[k]`` (e.g. the lower lip
        for the upper lip's anchor, so that an opening mouth stretches neither)."""
        reference = np.asarray(reference, np.float64)[:, :2]
        if len(anchors) != self.num_kp:
            raise ValueError(f"{len(anchors)} anchors for {self.num_kp} keypoints")
        count = self.neighbours.shape[1]
        neighbours, pinvs = [], []
        for k, anchor in enumerate(anchors):
            banned = set(exclude[k]) if exclude else set()
            order = np.argsort(np.linalg.norm(reference - reference[anchor], axis=1))
            chosen = [int(i) for i in order if int(i) not in banned][:count]
            centred = reference[chosen] - reference[chosen].mean(0)  # n x 2
            # J = F^T C (C^T C)^-1 for the frame's centred n x 2 neighbourhood F
            pinvs.append(centred @ np.linalg.inv(centred.T @ centred))
            neighbours.append(chosen)
        self.reference.copy_(torch.as_tensor(reference, dtype=torch.float32))
        self.anchors.copy_(torch.as_tensor(list(anchors)))
        self.neighbours.copy_(torch.as_tensor(neighbours))
        self.pinv.copy_(torch.as_tensor(np.stack(pinvs), dtype=torch.float32))

    def forward(self, landmarks: torch.Tensor) -> dict[str, torch.Tensor]:
        if landmarks.ndim != 3 or landmarks.shape[-1] != 2:
            raise ValueError(f"expected B x L x 2 landmarks, got {tuple(landmarks.shape)}")
        near = landmarks[:, self.neighbours]  # B x K x n x 2
        near = near - near.mean(2, keepdim=True)
        jacobian = torch.einsum("bkni,knj->bkij", near, self.pinv)
        return {"value": landmarks[:, self.anchors], "jacobian": jacobian}


def hold_last(landmarks: torch.Tensor, start: torch.Tensor) -> torch.Tensor:
    """T x L x 2 landmarks, NaN in the frames without a face -> each such frame gets the last
    landmarks found before it (before any: ``start``, L x 2), as an edge keeps the last
    keypoints it got."""
    out = landmarks.clone()
    last = start
    for i, frame in enumerate(out):
        if torch.isfinite(frame).all():
            last = frame
        else:
            out[i] = last
    return out


class FaceMeshDetector(nn.Module):
    """A FaceMesh-driven model's keypoint detector, called as a ``KPDetector`` is: B x 3 x H x W
    frames in [0, 1] -> {"value", "jacobian"}. MediaPipe FaceMesh finds the face afresh in every
    frame (so the result does not depend on the order of calls), :class:`MeshKeypoints` turns
    its landmarks into keypoints. A frame without a face keeps the last landmarks found, as an
    edge keeps the last keypoints it got (before any: the reference face in the middle of the
    frame); ``missed`` counts such frames. Needs MediaPipe (FaceMeshUnavailable otherwise).
    One graph: call it from one thread at a time."""

    def __init__(self, keypoints: MeshKeypoints) -> None:
        super().__init__()
        self.keypoints = keypoints
        self.num_kp = keypoints.num_kp
        self.missed = 0
        self._mesh = FaceMesh(static=True)
        self._last: torch.Tensor | None = None

    def landmarks(self, frames: torch.Tensor) -> torch.Tensor:
        """B x 468 x 2 landmarks of B x 3 x H x W frames in [0, 1], in [-1, 1] coordinates."""
        height, width = frames.shape[-2:]
        images = (frames.detach().clamp(0, 1) * 255).round().byte()
        images = images.permute(0, 2, 3, 1).cpu().numpy()
        scale = torch.tensor([2 / (width - 1), 2 / (height - 1)])
        missing = torch.full((self.keypoints.reference.shape[0], 2), float("nan"))
        found = [self._mesh.locate(image) for image in images]
        self.missed += sum(points is None for points in found)
        points = torch.stack([missing if p is None else torch.from_numpy(p) * scale - 1
                              for p in found])
        start = self.keypoints.reference.cpu() if self._last is None else self._last
        out = hold_last(points, start)
        if any(p is not None for p in found):
            self._last = out[-1]
        return out.to(frames.device)

    def forward(self, frames: torch.Tensor) -> dict[str, torch.Tensor]:
        return self.keypoints(self.landmarks(frames))

    def close(self) -> None:
        self._mesh.close()
