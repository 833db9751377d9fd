"""Keypoint prediction evaluation (``kpvid-eval predict``): the papers' protocols, open loop.

Each predictor is driven exactly as the receiver drives it: for every frame in order it either
observes the detected keypoint set or predicts the next one from its own past output. The
predicted sets are turned into frames by the FOMM generator and scored on predicted frames only.

- ``m1``: observe frames 1-5, predict 6-32. ``m2``: observe 1, predict 1, over the whole video.
  ``bair``: observe 5, predict 25 (the arm domain's BAIR-like protocol).
- reconstruction mode: the source is the video's own first frame, the ground truth its frames.
- transfer mode: the source is the first frame of the next video (the last video takes the
  first one's); the ground truth is the transfer rendered with every detected keypoint set, with
  FOMM's relative motion (movement and jacobian relative to the first driving frame).

Besides keypoint and frame errors: the PSNR gain over the ground truth's first frame held frozen,
and, with MediaPipe FaceMesh, the landmark error and mouth-opening correlation of the predicted
frames per clip (:mod:`~kpvid.training.face_metrics`).
"""

from __future__ import annotations

import argparse
import logging
import shlex
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from kpvid.models import (
    SHIPPED_CHECKPOINT,
    CheckpointError,
    ConfigError,
    KPDetector,
    OcclusionAwareGenerator,
    frame_size,
    kp_dict_from_kp6,
    load_checkpoint_with_config,
    model_id,
    normalize_kp,
    repeat_features,
)
from kpvid.models.facemesh import FaceMeshUnavailable
from kpvid.models.predictors import PREDICTORS, Predictor, make_predictor, rollout

from . import metrics
from .arguments import add_checkpoint_arguments, positive_int
from .dataset import list_test_videos, read_video
from .evaluate import write_json
from .extract import detect_kp6, frames_to_tensor
from .face_metrics import (
    FACE_MEAN_KEYS,
    FaceScorer,
    FaceScores,
    mean_face_scores,
    score_landmarks,
    use_face_metrics,
)
from .visualize import to_uint8

log = logging.getLogger(__name__)

MODES = ("reconstruction", "transfer")
COLUMNS = ("frame_mse", "kp_mse", "kp_pos_mse", "psnr", "ssim", "psnr_gain_frozen")
FRAME_COLUMNS = ("frame_mse", "psnr", "ssim", "psnr_gain_frozen")
FACE_STD_KEYS = ("landmark_error", "mouth_correlation", "mouth_correlation_pooled")
FACE_METRICS = ("MediaPipe FaceMesh on the predicted frames and the ground truth, 256 x 256: per "
                "video the mean landmark error (inter-ocular distances) and the Pearson "
                "correlation of the mouth opening, then per initialisation their mean over the "
                "videos (mouth_correlation: over those where it is defined; "
                "mouth_correlation_pooled: one correlation over every video's frames; "
                "landmark_missed: frames without a face, left out), then mean and sample std "
                "over initialisations")
FVD_UNAVAILABLE = "unavailable (no --i3d weights)"
I3D_SIZE = 224


@dataclass(frozen=True)
class Protocol:
    """Which frames are observed: the first ``observe`` of a ``frames``-long clip, or (``frames``
    None) ``observe`` out of every ``observe + predict`` over the whole video."""

    name: str
    observe: int
    predict: int
    frames: int | None
    inits: int  # the papers' number of model initialisations

    @property
    def min_frames(self) -> int:
        return self.frames or self.observe + self.predict

    def observed(self, length: int) -> np.ndarray:
        """Bool mask of the observed frames of a clip cut from a ``length``-frame video."""
        t = np.arange(self.frames or length)
        if self.frames:
            return t < self.observe
        return t % (self.observe + self.predict) < self.observe


PROTOCOLS = {
    "m1": Protocol("m1", observe=5, predict=27, frames=32, inits=10),
    "m2": Protocol("m2", observe=1, predict=1, frames=None, inits=5),
    "bair": Protocol("bair", observe=5, predict=25, frames=30, inits=5),
}


@dataclass(frozen=True)
class PredictorSpec:
    """A predictor to evaluate: a built-in by name, or a learned kind with its files (one per
    initialisation)."""

    name: str
    files: tuple[Path, ...] = ()

    @property
    def key(self) -> str:
        """Its key in the results (``constant-velocity`` -> ``constant_velocity``)."""
        return self.name.replace("-", "_")


def parse_predictor(text: str) -> PredictorSpec:
    """``hold-last``, ``constant-velocity`` or ``KIND=FILE[,FILE...]`` (learned predictors)."""
    name, sep, files = text.partition("=")
    if sep:
        paths = tuple(Path(f) for f in files.split(",") if f)
        if not name or not paths:
            raise argparse.ArgumentTypeError(f"expected KIND=FILE[,FILE...], got {text!r}")
        return PredictorSpec(name, paths)
    if name not in PREDICTORS:
        raise argparse.ArgumentTypeError(
            f"unknown predictor {name!r}: built-ins are {', '.join(sorted(PREDICTORS))}; "
            "learned ones take their files, e.g. vrnn=run1.pt,run2.pt")
    return PredictorSpec(name)


@dataclass
class EvalOptions:
    """What to evaluate and how (the flags of ``kpvid-eval predict``)."""

    protocols: tuple[str, ...]
    mode: str = "reconstruction"
    predictors: tuple[PredictorSpec, ...] = (PredictorSpec("constant-velocity"),
                                             PredictorSpec("hold-last"))
    inits: int | None = None  # None: each protocol's own (10 for m1, 5 for m2 and bair)
    samples: int = 1
    seed: int = 0
    max_videos: int | None = None
    batch: int = 32
    adapt_scale: bool = True
    i3d: Path | None = None
    face_metrics: bool = False  # FaceMesh landmark error and mouth correlation
    model_id: str | None = None  # the FOMM checkpoint's, checked against learned predictors
    device: str = "cpu"
    progress: bool = True


def load_learned(spec: PredictorSpec, path: Path, num_kp: int, checkpoint_id: str | None,
                 samples: int, seed: int) -> Predictor:
    """A learned predictor file, checked against the keypoint model (CheckpointError naming
    both keypoint counts or model ids); a label that is a learned kind must match the file's."""
    from kpvid.models.learned_predictor import load_predictor
    from kpvid.models.predictors import LEARNED_PREDICTORS

    predictor = load_predictor(path, num_kp=num_kp, model_id=checkpoint_id, samples=samples,
                               seed=seed)
    if spec.name in LEARNED_PREDICTORS and predictor.name != spec.name:
        raise ValueError(f"{path} holds a {predictor.name!r} predictor, not {spec.name!r}")
    return predictor


def make_runs(spec: PredictorSpec, inits: int, num_kp: int, options: EvalOptions
              ) -> list[Predictor]:
    """One predictor per initialisation: the first ``inits`` files of a learned kind; a single
    one for a built-in (they are deterministic)."""
    if not spec.files:
        return [make_predictor(spec.name)]
    if len(spec.files) < inits:
        log.warning("%s: %d file(s) given, fewer than the %d initialisations asked for",
                    spec.name, len(spec.files), inits)
    return [load_learned(spec, path, num_kp, options.model_id, options.samples, options.seed + i)
            for i, path in enumerate(spec.files[:inits])]


class Renderer:
    """Frames from keypoint sets for one source image (its features computed once). With
    ``driving_initial`` (transfer mode) the sets are applied as FOMM relative motion."""

    def __init__(self, kp_detector: KPDetector, generator: OcclusionAwareGenerator,
                 source: torch.Tensor, driving_initial: np.ndarray | None = None,
                 adapt_scale: bool = True, batch: int = 32) -> None:
        self.generator = generator
        self.source = source
        self.batch = batch
        self.adapt_scale = adapt_scale
        with torch.inference_mode():
            self.features = generator.encode_source(source)
            self.kp_source = kp_detector(source)
        self.kp_initial = (None if driving_initial is None
                           else kp_dict_from_kp6(driving_initial[None], source.device))

    @torch.inference_mode()
    def __call__(self, kp6: np.ndarray) -> torch.Tensor:
        """``(n, K, 6)`` sets -> n x 3 x H x W frames in [0, 1]."""
        out = []
        for start in range(0, len(kp6), self.batch):
            kp_driving = kp_dict_from_kp6(kp6[start:start + self.batch], self.source.device)
            if self.kp_initial is not None:
                kp_driving = normalize_kp(self.kp_source, kp_driving, self.kp_initial,
                                          adapt_movement_scale=self.adapt_scale,
                                          use_relative_movement=True,
                                          use_relative_jacobian=True)
            n = kp_driving["value"].shape[0]
            kp_source = {k: v.expand(n, *v.shape[1:]) for k, v in self.kp_source.items()}
            result = self.generator.decode(repeat_features(self.features, n),
                                           self.source.expand(n, -1, -1, -1), kp_driving,
                                           kp_source)
            out.append(result["prediction"])
        return torch.cat(out)


def score_frames(frames: torch.Tensor, target: torch.Tensor, frozen: torch.Tensor,
                 kp6: np.ndarray, kp6_target: np.ndarray, index: np.ndarray) -> np.ndarray:
    """Rows ``[frame number (1-based), *COLUMNS]``, one per scored frame; ``frozen``: the
    1 x 3 x H x W frame the PSNR gain is measured over (the ground truth's first)."""
    frame_mse = ((frames - target) ** 2).flatten(1).mean(1).cpu().numpy()
    diff = (kp6 - kp6_target).astype(np.float64) ** 2
    psnr = metrics.psnr(frames, target).cpu().numpy()
    columns = {"frame_mse": frame_mse, "kp_mse": diff.mean(axis=(1, 2)),
               "kp_pos_mse": diff[..., :2].mean(axis=(1, 2)), "psnr": psnr,
               "ssim": metrics.ssim(frames, target).cpu().numpy(),
               "psnr_gain_frozen": psnr - metrics.psnr(frozen.expand_as(target),
                                                       target).cpu().numpy()}
    return np.column_stack([index + 1, *(columns[c] for c in COLUMNS)]).astype(np.float64)


def summarize(runs: list[np.ndarray], columns: tuple[str, ...] = COLUMNS) -> dict:
    """Mean over the scored frames, overall and per frame number, then mean and std over the
    runs (initialisations; sample std, 0 for a single run). ``runs``: arrays from
    :func:`score_frames`, one per run, stacked over videos."""
    picks = [1 + COLUMNS.index(c) for c in columns]
    overall = np.array([run[:, picks].mean(0) for run in runs])
    numbers = np.unique(runs[0][:, 0])
    per = np.array([[run[run[:, 0] == t][:, picks].mean(0) for t in numbers] for run in runs])
    ddof = 1 if len(runs) > 1 else 0

    def named(values: np.ndarray) -> dict[str, float]:
        return {c: float(v) for c, v in zip(columns, values)}

    per_mean, per_std = per.mean(0), per.std(0, ddof=ddof)
    return {**named(overall.mean(0)), "std": named(overall.std(0, ddof=ddof)),
            "per_frame": [{"frame": int(t), **named(per_mean[i]), "std": named(per_std[i])}
                          for i, t in enumerate(numbers)],
            "inits": len(runs), "frames": int(runs[0].shape[0])}


def summarize_faces(runs: list[list[FaceScores]] | None) -> dict:
    """FaceMesh scores of each run (clip-level means over its videos,
    :func:`~kpvid.training.face_metrics.mean_face_scores`), then their mean over the runs and,
    for the scores, the sample std (under ``std``); all None without FaceMesh."""
    if runs is None:
        return {**mean_face_scores(None), "std": dict.fromkeys(FACE_STD_KEYS)}
    per_run = [mean_face_scores(run) for run in runs]
    values = {key: [r[key] for r in per_run if r[key] is not None] for key in FACE_MEAN_KEYS}
    return {**{key: float(np.mean(v)) if v else None for key, v in values.items()},
            "std": {key: float(np.std(values[key], ddof=1 if len(values[key]) > 1 else 0))
                    if values[key] else None for key in FACE_STD_KEYS}}


def _with_faces(summary: dict, faces: list[list[FaceScores]] | None) -> dict:
    """``summary`` with the FaceMesh scores of :func:`summarize_faces` (their std in ``std``)."""
    scores = summarize_faces(faces)
    return {**summary, **{k: v for k, v in scores.items() if k != "std"},
            "std": {**summary["std"], **scores["std"]}}


class FVD:
    """Fréchet Video Distance with a user-supplied I3D (TorchScript, or a ``torch.export``
    ``.pt2`` program): called on float ``(B, 3, T, 224, 224)`` clips in [-1, 1], returning
    ``(B, D)`` features (logits or pooled)."""

    def __init__(self, path: str | Path, device: str | torch.device = "cpu") -> None:
        if not Path(path).is_file():
            raise ValueError(f"I3D model not found: {path}")
        try:
            if str(path).endswith(".pt2"):
                self.model = torch.export.load(str(path)).module().to(device)
            else:
                self.model = torch.jit.load(str(path), map_location=device).eval()
        except Exception as exc:  # torch raises many types for a bad file
            raise ValueError(f"cannot load the I3D model {path}: {exc}") from exc

    @torch.inference_mode()
    def features(self, video: torch.Tensor) -> np.ndarray:
        """``(D,)`` features of one T x 3 x H x W clip in [0, 1]."""
        x = F.interpolate(video, size=(I3D_SIZE, I3D_SIZE), mode="bilinear",
                          align_corners=False) * 2 - 1
        return self.model(x.permute(1, 0, 2, 3).unsqueeze(0)).reshape(-1).double().cpu().numpy()


def frechet_distance(a: np.ndarray, b: np.ndarray) -> float:
    """Fréchet distance of Gaussians fitted to ``(N, D)`` feature sets (N >= 2 each)."""
    mu_a, mu_b = a.mean(0), b.mean(0)
    cov_a, cov_b = np.cov(a, rowvar=False), np.cov(b, rowvar=False)
    w, v = np.linalg.eigh(cov_a)
    root_a = (v * np.sqrt(np.clip(w, 0, None))) @ v.T
    trace_root = np.sqrt(np.clip(np.linalg.eigvalsh(root_a @ cov_b @ root_a), 0, None)).sum()
    return float(((mu_a - mu_b) ** 2).sum() + np.trace(cov_a) + np.trace(cov_b)
                 - 2 * trace_root)


@dataclass
class Video:
    name: str
    frames: torch.Tensor  # T x 3 x H x W in [0, 1]
    kp6: np.ndarray  # (T, K, 6)


class _Collector:
    """Scores per (protocol, predictor key, run), FVD features, video counts."""

    def __init__(self) -> None:
        self.rows: dict[tuple[str, str], list[list[np.ndarray]]] = {}
        self.features: dict[tuple[str, str], list[list[np.ndarray]]] = {}
        self.faces: dict[tuple[str, str], list[list[FaceScores]]] = {}
        self.videos: dict[str, int] = {}
        self.skipped: dict[str, int] = {"unreadable": 0}

    def add(self, store: dict, protocol: str, key: str, run: int, value: np.ndarray) -> None:
        runs = store.setdefault((protocol, key), [])
        while len(runs) <= run:
            runs.append([])
        runs[run].append(value)


def _read_videos(paths: list[Path], size: int, kp_detector: KPDetector, options: EvalOptions,
                 collector: _Collector) -> Iterator[Video]:
    for path in tqdm(paths, desc=f"predict ({options.mode})", unit="video",
                     disable=not options.progress, dynamic_ncols=True):
        try:
            array = read_video(path, size=size)
        except ValueError as exc:
            log.warning("skipping %s", exc)
            collector.skipped["unreadable"] += 1
            continue
        frames = frames_to_tensor(array, options.device)
        yield Video(path.name, frames, detect_kp6(kp_detector, frames, options.batch))


def _with_sources(videos: Iterator[Video], transfer: bool
                  ) -> Iterator[tuple[Video, torch.Tensor]]:
    """Each video with its source image: its own first frame, or (transfer) the next video's
    first frame, the last video taking the first one's."""
    if not transfer:
        for video in videos:
            yield video, video.frames[:1]
        return
    first = current = next(videos, None)
    if first is None:
        return
    first_source = first.frames[:1].clone()
    for following in videos:
        yield current, following.frames[:1]
        current = following
    if current is first:
        raise ValueError("transfer mode needs at least two readable videos")
    yield current, first_source


def evaluate_predictions(kp_detector: KPDetector, generator: OcclusionAwareGenerator,
                         data: str | Path, size: int, options: EvalOptions) -> dict:
    """Run every protocol for every predictor over the videos under ``data`` (its ``test/``
    when present); returns the results dict (protocols, then ``meta``) without the command."""
    _, paths = list_test_videos(data, options.max_videos)
    if options.mode not in MODES:
        raise ValueError(f"unknown mode {options.mode!r}; choose one of {', '.join(MODES)}")
    protocols = [PROTOCOLS[name] for name in options.protocols]
    num_kp = kp_detector.num_kp
    runs = {(p.name, spec.key): make_runs(spec, options.inits or p.inits, num_kp, options)
            for p in protocols for spec in options.predictors}
    fvd = FVD(options.i3d, options.device) if options.i3d else None
    transfer = options.mode == "transfer"
    collector = _Collector()
    for p in protocols:
        collector.videos[p.name] = collector.skipped[p.name] = 0
    videos = _read_videos(paths, size, kp_detector, options, collector)
    faces = FaceScorer() if options.face_metrics else None
    try:
        for video, source in _with_sources(videos, transfer):
            _evaluate_video(video, source, kp_detector, generator, protocols, runs, options,
                            fvd, faces, collector)
    finally:
        if faces:
            faces.close()
    return _results(collector, protocols, options, fvd is not None)


def _evaluate_video(video: Video, source: torch.Tensor, kp_detector: KPDetector,
                    generator: OcclusionAwareGenerator, protocols: list[Protocol],
                    runs: dict[tuple[str, str], list[Predictor]], options: EvalOptions,
                    fvd: FVD | None, faces: FaceScorer | None, collector: _Collector) -> None:
    """Score every protocol and predictor run on one video into ``collector``."""
    transfer = options.mode == "transfer"
    render = Renderer(kp_detector, generator, source,
                      video.kp6[0] if transfer else None, options.adapt_scale, options.batch)
    full = render(video.kp6)  # every detected set: the transfer ground truth
    truth = full if transfer else video.frames
    truth_points = faces.landmarks(to_uint8(truth)) if faces else []

    def add_faces(protocol: str, key: str, run: int, frames: torch.Tensor,
                  index: np.ndarray) -> None:
        if faces:
            collector.add(collector.faces, protocol, key, run,
                          score_landmarks([truth_points[i] for i in index],
                                          faces.landmarks(to_uint8(frames))))

    for p in protocols:
        if len(video.kp6) < p.min_frames:
            log.warning("skipping %s for %s: %d frames, the protocol needs %d", video.name,
                        p.name, len(video.kp6), p.min_frames)
            collector.skipped[p.name] += 1
            continue
        collector.videos[p.name] += 1
        observed = p.observed(len(video.kp6))
        length = len(observed)
        index = np.flatnonzero(~observed)
        kp6 = video.kp6[:length]
        if not transfer:
            collector.add(collector.rows, p.name, "", 0,
                          score_frames(full[index], truth[index], truth[:1], kp6[index],
                                       kp6[index], index))
            add_faces(p.name, "", 0, full[index], index)
        if fvd:
            collector.add(collector.features, p.name, "", 0, fvd.features(truth[:length]))
            if not transfer:
                collector.add(collector.features, p.name, "all", 0,
                              fvd.features(full[:length]))
        for spec in options.predictors:
            for run, predictor in enumerate(runs[(p.name, spec.key)]):
                predicted = rollout(predictor, kp6, observed)
                frames = render(predicted[index])
                collector.add(collector.rows, p.name, spec.key, run,
                              score_frames(frames, truth[index], truth[:1], predicted[index],
                                           kp6[index], index))
                add_faces(p.name, spec.key, run, frames, index)
                if fvd:
                    clip = full[:length].clone()
                    clip[index] = frames
                    collector.add(collector.features, p.name, spec.key, run,
                                  fvd.features(clip))


def _results(collector: _Collector, protocols: list[Protocol], options: EvalOptions,
             with_fvd: bool) -> dict:
    results: dict = {}
    reference: dict = {}
    fvd: dict = {}
    for p in protocols:
        if not collector.videos[p.name]:
            raise ValueError(f"no video is long enough for {p.name} ({p.min_frames} frames)")
        results[p.name] = {
            spec.key: _with_faces(summarize([np.concatenate(r) for r in
                                             collector.rows[(p.name, spec.key)]]),
                                  collector.faces.get((p.name, spec.key)))
            for spec in options.predictors}
        if options.mode == "reconstruction":
            reference[p.name] = _with_faces(
                summarize([np.concatenate(collector.rows[(p.name, "")][0])], FRAME_COLUMNS),
                collector.faces.get((p.name, "")))
        if with_fvd:
            fvd[p.name] = _fvd_scores(collector.features, p.name, options)
    meta: dict = {
        "mode": options.mode, "videos": collector.videos, "skipped": collector.skipped,
        "fvd": fvd if with_fvd else FVD_UNAVAILABLE,
        "protocols": {p.name: {"observe": p.observe, "predict": p.predict,
                               "frames": p.frames or "whole video"} for p in protocols},
        "predictors": {spec.key: [str(f) for f in spec.files] or "built-in"
                       for spec in options.predictors},
        "samples": options.samples,
        "scores": "mean over predicted frames of all videos, then mean and sample std over "
                  "initialisations; kp_mse over K x 6 (positions in [-1, 1] and jacobians), "
                  "kp_pos_mse over positions only; frame_mse of RGB in [0, 1]; "
                  "psnr_gain_frozen: PSNR minus that of the ground truth's first frame held "
                  "frozen, dB",
        "face_metrics": (FACE_METRICS if options.face_metrics
                         else "off (--no-face-metrics, or MediaPipe FaceMesh not installed)"),
    }
    if options.mode == "transfer":
        meta["transfer"] = {"pairing": "video i driven onto the first frame of video i+1 (the "
                                       "last onto the first)",
                            "adapt_movement_scale": options.adapt_scale,
                            "use_relative_movement": True, "use_relative_jacobian": True}
    else:
        meta["reference"] = {"what": "every frame rendered with its own detected keypoints (no "
                                     "prediction): the floor for any predictor", **reference}
    return {**results, "meta": meta}


def _fvd_scores(features: dict, protocol: str, options: EvalOptions) -> dict:
    real = np.stack(features[(protocol, "")][0])
    scores = {}
    keys = [spec.key for spec in options.predictors]
    if options.mode == "reconstruction":
        keys.append("all")
    for key in keys:
        values = [frechet_distance(real, np.stack(run)) for run in features[(protocol, key)]]
        scores["all_keypoints" if key == "all" else key] = {
            "fvd": float(np.mean(values)),
            "std": float(np.std(values, ddof=1 if len(values) > 1 else 0)),
            "inits": len(values)}
    return scores


def format_table(results: dict) -> str:
    """Plain-text table: each protocol's predictors with overall scores (± std over inits)."""
    lines = []
    for protocol, entries in results.items():
        if protocol == "meta":
            continue
        lines.append(f"{protocol} ({results['meta']['mode']}, "
                     f"{results['meta']['videos'][protocol]} videos)")
        lines.append(f"  {'predictor':<20}{'inits':>6}{'frame MSE':>20}{'PSNR':>16}"
                     f"{'SSIM':>9}{'gain dB':>9}{'LM err':>8}{'mouth r':>9}{'kp MSE':>12}"
                     f"{'kp pos MSE':>12}")
        rows = dict(entries)
        if "reference" in results["meta"]:
            rows["(all keypoints)"] = results["meta"]["reference"][protocol]
        for key, s in rows.items():
            std = s["std"]
            lines.append(
                f"  {key:<20}{s['inits']:>6}{s['frame_mse']:>11.5f} ±{std['frame_mse']:.5f}"
                f"{s['psnr']:>9.2f} ±{std['psnr']:.2f}{s['ssim']:>9.3f}"
                f"{s['psnr_gain_frozen']:>9.2f}{_optional(s['landmark_error'], 3):>8}"
                f"{_optional(s['mouth_correlation'], 3):>9}"
                + (f"{s['kp_mse']:>12.5f}{s['kp_pos_mse']:>12.5f}" if "kp_mse" in s else ""))
    return "\n".join(lines)


def _optional(value: float | None, digits: int) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def format_markdown(results: dict) -> str:
    """Markdown tables, one per protocol: predictors best first by frame MSE (mean ± std over
    initialisations; MSEs in thousandths), how far each is from the best, and the all-keypoints
    reference."""
    meta = results["meta"]

    def spread(s: dict, key: str, scale: float, digits: int) -> str:
        value = f"{s[key] * scale:.{digits}f}"
        return value if s["inits"] < 2 else f"{value} ± {s['std'][key] * scale:.{digits}f}"

    lines = []
    for protocol, entries in results.items():
        if protocol == "meta":
            continue
        ranked = sorted(entries.items(), key=lambda item: item[1]["frame_mse"])
        best = ranked[0][1]["frame_mse"]
        lines += [f"**{protocol.upper()}, {meta['mode']}** ({meta['videos'][protocol]} videos)",
                  "",
                  "| predictor | inits | frame MSE (x1e-3) | vs best | PSNR (dB) | SSIM | "
                  "gain over frozen (dB) | landmark error | mouth r | kp MSE (x1e-3) |",
                  "|---|---|---|---|---|---|---|---|---|---|"]
        for key, s in ranked:
            lines.append(
                f"| {key} | {s['inits']} | {spread(s, 'frame_mse', 1e3, 3)} | "
                f"{100 * (s['frame_mse'] / best - 1):+.1f} % | {spread(s, 'psnr', 1, 2)} | "
                f"{spread(s, 'ssim', 1, 3)} | {spread(s, 'psnr_gain_frozen', 1, 2)} | "
                f"{_optional(s['landmark_error'], 3)} | {_optional(s['mouth_correlation'], 3)} | "
                f"{spread(s, 'kp_mse', 1e3, 2)} |")
        if "reference" in meta:
            ref = meta["reference"][protocol]
            lines.append(f"| *all keypoints (no prediction)* | | {ref['frame_mse'] * 1e3:.3f} | "
                         f"| {ref['psnr']:.2f} | {ref['ssim']:.3f} | "
                         f"{ref['psnr_gain_frozen']:.2f} | {_optional(ref['landmark_error'], 3)} "
                         f"| {_optional(ref['mouth_correlation'], 3)} | |")
        lines.append("")
    return "\n".join(lines)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="kpvid-eval predict",
        description="Reproduce the papers' keypoint prediction experiments, open loop: each "
                    "predictor observes the protocol's observed frames and predicts the others "
                    "from its own output; predicted keypoints are rendered by the FOMM generator "
                    "and scored against the ground truth on the predicted frames (keypoint MSE, "
                    "frame MSE, PSNR, SSIM, PSNR gain over a frozen first frame; per frame "
                    "number and overall, mean and std over initialisations; with MediaPipe "
                    "FaceMesh also landmark error and mouth correlation per video). Prints a "
                    "table; writes JSON and PNG plots on request.",
        epilog="protocols: m1 = observe frames 1-5, predict 6-32; m2 = observe 1, predict 1 over "
               "the whole video; bair = observe 5, predict 25. Videos shorter than a protocol "
               "needs are skipped for it (counted in meta.skipped).")
    add_checkpoint_arguments(parser)
    parser.add_argument("--data", type=Path, required=True,
                        metavar="DIR",
                        help="data folder (its test/ subfolder when present)")
    parser.add_argument("--protocol", nargs="+", choices=sorted(PROTOCOLS), default=["m1", "m2"],
                        help="protocols to run (default: m1 m2)")
    parser.add_argument("--mode", choices=MODES, default="reconstruction",
                        help="reconstruction: source = the video's first frame, ground truth = "
                             "its frames; transfer: source = the next video's first frame, "
                             "ground truth = the transfer rendered with every keypoint set "
                             "(default: reconstruction)")
    parser.add_argument("--predictors", nargs="+", type=parse_predictor,
                        default=[PredictorSpec("constant-velocity"), PredictorSpec("hold-last")],
                        metavar="PREDICTOR",
                        help="built-ins (constant-velocity, hold-last) and learned predictors as "
                             "KIND=FILE[,FILE...], one file per initialisation, e.g. "
                             "vrnn=run1.pt,run2.pt (default: constant-velocity hold-last)")
    parser.add_argument("--inits", type=positive_int, default=None,
                        metavar="N",
                        help="initialisations (files) per learned kind: the first N files "
                             "(default: 10 for m1, 5 for m2 and bair, as in the paper)")
    parser.add_argument("--samples", type=positive_int, default=1,
                        metavar="N",
                        help="learned predictors: 1 = deterministic (prior mean), n > 1 = mean "
                             "of n samples (default: 1)")
    parser.add_argument("--seed", type=int, default=0,
                        help="sampling seed of the first initialisation (+1 for each next one; "
                             "default: 0)")
    parser.add_argument("--max-videos", type=positive_int, default=None,
                        metavar="N",
                        help="only the first N videos (sorted by name)")
    parser.add_argument("--json", type=Path, default=None, metavar="FILE",
                        help="write the results here")
    parser.add_argument("--markdown", type=Path, default=None, metavar="FILE",
                        help="write the tables as Markdown here (predictors ranked by frame "
                             "MSE)")
    parser.add_argument("--plots", type=Path, default=None,
                        metavar="DIR",
                        help="folder for PNG plots of kp MSE, frame MSE and PSNR against the "
                             "frame number (needs matplotlib)")
    parser.add_argument("--i3d", type=Path, default=None,
                        metavar="FILE",
                        help="I3D for FVD (TorchScript file, or torch.export .pt2), called on "
                             "(B, 3, T, 224, 224) clips in [-1, 1] and returning (B, D) "
                             "features; FVD compares whole clips (observed + predicted frames) "
                             "with the ground truth. Without it FVD is reported unavailable")
    parser.add_argument("--face-metrics", action=argparse.BooleanOptionalAction, default=None,
                        help="FaceMesh landmark error and mouth correlation of the predicted "
                             "frames (default: on when MediaPipe FaceMesh is installed); "
                             "--face-metrics fails without it")
    parser.add_argument("--no-adapt-scale", dest="adapt_scale", action="store_false",
                        help="transfer mode: do not scale the driving motion by the ratio of "
                             "the keypoint hulls (FOMM's adapt_movement_scale, on by default)")
    parser.add_argument("--batch", type=positive_int, default=32,
                        metavar="N",
                        help="frames per detector / generator call (default: 32)")
    parser.add_argument("--threads", type=positive_int, default=None,
                        metavar="N",
                        help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:N] (default: cpu)")
    parser.add_argument("--quiet", action="store_true", help="no progress bar")
    return parser


def predict_main(argv: list[str] | None = None) -> int:
    """``kpvid-eval predict``: the papers' prediction protocols on a data set."""
    argv = sys.argv[1:] if argv is None else list(argv)
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        parser.error(f"device '{args.device}' asked for but CUDA is not available")
    keys = [spec.key for spec in args.predictors]
    if len(set(keys)) != len(keys):
        parser.error(f"a predictor is named twice: {' '.join(keys)}")
    if args.threads:
        torch.set_num_threads(args.threads)
    try:
        face_metrics = use_face_metrics(args.face_metrics)
    except FaceMeshUnavailable as exc:
        log.error("%s", exc)
        return 2
    options = EvalOptions(protocols=tuple(dict.fromkeys(args.protocol)), mode=args.mode,
                          predictors=tuple(args.predictors), inits=args.inits,
                          samples=args.samples, seed=args.seed, max_videos=args.max_videos,
                          batch=args.batch, adapt_scale=args.adapt_scale, i3d=args.i3d,
                          face_metrics=face_metrics,
                          model_id=model_id(args.checkpoint), device=args.device,
                          progress=not args.quiet)
    start = time.perf_counter()
    try:
        kp_detector, generator, config = load_checkpoint_with_config(args.checkpoint, args.config,
                                                                     args.device)
        results = evaluate_predictions(kp_detector, generator, args.data, frame_size(config),
                                       options)
    except (ConfigError, CheckpointError, ValueError, NotADirectoryError) as exc:
        log.error("%s", exc)
        return 2
    shipped = args.checkpoint.resolve() == SHIPPED_CHECKPOINT.resolve()
    results["meta"] = {"command": shlex.join(["kpvid-eval", "predict", *argv]),
                       "checkpoint": (f"models/weights/{SHIPPED_CHECKPOINT.name}" if shipped
                                      else str(args.checkpoint)),
                       "model_id": model_id(args.checkpoint),
                       "data": str(args.data), **results["meta"],
                       "threads": torch.get_num_threads(), "device": args.device,
                       "seconds": round(time.perf_counter() - start, 1)}
    print(format_table(results))
    if args.json:
        write_json(results, args.json)
        log.info("wrote %s", args.json)
    if args.markdown:
        args.markdown.parent.mkdir(parents=True, exist_ok=True)
        args.markdown.write_text(format_markdown(results))
        log.info("wrote %s", args.markdown)
    if args.plots:
        from .plots import write_plots

        for path in write_plots(results, args.plots):
            log.info("wrote %s", path)
    return 0
