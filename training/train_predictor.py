"""Training of the learned keypoint predictors (``kpvid-train predictor``), on CPU.

Input: a keypoint sequence file from ``kpvid-extract`` (``kp`` (N, T, K, 6), ``lengths``,
``names``, ``model_id``, ...). A fixed 10% of the sequences (``--val-fraction``, drawn with
``--val-seed``, not ``--seed``) is held out. Each step samples a batch of training sequences and
an observe/predict schedule (``--schedule``: m1, m2 or mixed, see
:func:`kpvid.models.sequence_model.schedule_mask`) and minimises the network's open-loop
sequence loss, with beta ramped linearly from 0 over ``--kl-anneal`` steps, AdamW, gradient
clipping and a cosine learning-rate decay to a tenth.

Every ``--val-every`` steps the held-out sequences are rolled out open loop in deterministic mode
under M1 (observe 5, predict the rest) and M2 (observe 1, predict 1); the score is the mean
squared error of the predicted sets in the detector's own units (all six kp6 numbers; ``xy_mse``:
positions only). The run folder gets ``metrics.jsonl``, ``last.pt`` (latest weights),
``predictor.pt`` (best so far by the mean over M1 and M2 of the kp MSE relative to hold-last's;
what ships) and, at the end, ``summary.json`` with
the final figures next to hold-last and constant-velocity on the same sequences.
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import shlex
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from kpvid.models.checkpoint import CheckpointError
from kpvid.models.learned_predictor import (
    NETWORKS,
    Normalisation,
    build_network,
    save_predictor,
)
from kpvid.models.predictors import ConstantVelocity, HoldLast, Predictor, rollout
from kpvid.models.sequence_model import SCHEDULES, KeypointSequenceModel, schedule_mask

from .arguments import non_negative, positive_int

log = logging.getLogger(__name__)

EVAL_SCHEDULES = ("m1", "m2")
MIN_LENGTH = {"m1": 6, "m2": 2}  # frames a sequence needs for at least one predicted frame


@dataclass(frozen=True)
class KeypointData:
    """A keypoint sequence file: ``kp`` (N, T, K, 6) float32, padded past ``lengths``."""

    kp: np.ndarray
    lengths: np.ndarray
    names: np.ndarray
    model_id: str | None
    frame_size: int | None

    @property
    def num_kp(self) -> int:
        return int(self.kp.shape[2])

    def valid(self) -> np.ndarray:
        """(N, T) bool: frames before each sequence's true length."""
        return np.arange(self.kp.shape[1])[None, :] < self.lengths[:, None]

    def subset(self, index: np.ndarray) -> KeypointData:
        return KeypointData(self.kp[index], self.lengths[index], self.names[index], self.model_id,
                            self.frame_size)


def load_keypoint_file(path: str | Path) -> KeypointData:
    """Read and check a ``kpvid-extract`` .npz file (ValueError saying what is wrong)."""
    path = Path(path)
    if not path.is_file():
        raise ValueError(f"keypoint file not found: {path}")
    try:
        with np.load(path, allow_pickle=False) as npz:
            files = {key: npz[key] for key in npz.files}
    except (OSError, ValueError) as exc:
        raise ValueError(f"cannot read keypoint file {path}: {exc}") from exc
    if "kp" not in files:
        raise ValueError(f"{path} has no 'kp' array (keys: {', '.join(files)})")
    kp = files["kp"].astype(np.float32)
    if kp.ndim != 4 or kp.shape[3] != 6 or 0 in kp.shape:
        raise ValueError(f"{path}: 'kp' must be (N, T, K, 6), got {kp.shape}")
    if not np.all(np.isfinite(kp)):
        raise ValueError(f"{path}: 'kp' has non-finite values")
    lengths = files.get("lengths", np.full(kp.shape[0], kp.shape[1])).astype(np.int64)
    if lengths.shape != (kp.shape[0],) or lengths.min() < 1 or lengths.max() > kp.shape[1]:
        raise ValueError(f"{path}: 'lengths' must be N values in 1..{kp.shape[1]}")
    names = files.get("names", np.array([str(i) for i in range(kp.shape[0])]))
    model_id = str(files["model_id"]) if "model_id" in files else None
    size = int(files["frame_size"]) if "frame_size" in files else None
    return KeypointData(kp, lengths, names.astype(str), model_id, size)


def split_indices(count: int, fraction: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """(train, validation) indices: a seeded ``fraction`` of ``count`` held out (at least one
    each when ``count >= 2``)."""
    if not 0 < fraction < 1:
        raise ValueError(f"validation fraction must be in (0, 1), got {fraction}")
    if count < 2:
        raise ValueError(f"need at least 2 sequences to hold some out, got {count}")
    order = np.random.default_rng(seed).permutation(count)
    held = min(max(1, round(count * fraction)), count - 1)
    return np.sort(order[held:]), np.sort(order[:held])


@dataclass(frozen=True)
class OpenLoopScore:
    """Open-loop error of one predictor under one schedule, in the detector's units."""

    kp_mse: float  # mean over predicted frames, keypoints and the six kp6 numbers
    xy_mse: float  # positions only
    sequences: int  # sequences scored
    skipped: int  # sequences too short for the schedule

    def to_json(self) -> dict:
        return asdict(self)


def _score(predicted: np.ndarray, data: KeypointData, masks: np.ndarray, used: np.ndarray,
           schedule: str) -> OpenLoopScore:
    """Scores of predicted sets (n, T, K, 6) for the ``used`` sequences of ``data``."""
    target = data.kp[used]
    scored = ~masks & data.valid()[used]
    err = (predicted - target) ** 2
    frames = scored.sum()
    skipped = int(len(data.kp) - used.size)
    if skipped:
        log.warning("%d sequences shorter than %s needs (%d frames) skipped", skipped, schedule,
                    MIN_LENGTH[schedule])
    if frames == 0:
        return OpenLoopScore(math.nan, math.nan, 0, skipped)
    return OpenLoopScore(float(err[scored].mean()), float(err[scored][..., :2].mean()),
                         int(used.size), skipped)


def _eval_masks(data: KeypointData, schedule: str) -> tuple[np.ndarray, np.ndarray]:
    used = np.flatnonzero(data.lengths >= MIN_LENGTH[schedule])
    mask = schedule_mask(schedule, data.kp.shape[1])
    return used, np.broadcast_to(mask, (used.size, mask.size))


def evaluate_network(network: KeypointSequenceModel, norm: Normalisation, data: KeypointData,
                     schedule: str, samples: int = 1, seed: int = 0,
                     batch: int = 256) -> OpenLoopScore:
    """Open-loop score of a network (deterministic with ``samples == 1``, else the mean of
    ``samples`` sampled rollouts per sequence), batched over sequences."""
    used, masks = _eval_masks(data, schedule)
    generator = torch.Generator().manual_seed(seed)
    x_all = torch.from_numpy(norm.apply(data.kp[used]))
    was_training = network.training
    network.eval()
    outputs = []
    for start in range(0, used.size, batch):
        x = x_all[start:start + batch].repeat_interleave(samples, dim=0)
        mask = torch.from_numpy(masks[start:start + batch].copy()).repeat_interleave(samples, 0)
        out = network.rollout(x, mask, sample=samples > 1, generator=generator)
        outputs.append(out.view(-1, samples, *out.shape[1:]).mean(dim=1).numpy())
    network.train(was_training)
    predicted = norm.invert(np.concatenate(outputs)) if outputs else data.kp[used]
    return _score(predicted, data, masks, used, schedule)


def evaluate_predictor(make: Callable[[], Predictor], data: KeypointData, schedule: str
                       ) -> OpenLoopScore:
    """Open-loop score of a streaming predictor (e.g. hold-last), one sequence at a time."""
    used, masks = _eval_masks(data, schedule)
    predictor = make()
    predicted = np.stack([rollout(predictor, data.kp[i], m)
                          for i, m in zip(used, masks)]) if used.size else data.kp[used]
    return _score(predicted, data, masks, used, schedule)


@dataclass
class PredictorTrainOptions:
    """Everything ``kpvid-train predictor`` takes."""

    kind: str
    data: str
    out: str
    steps: int = 3000
    batch: int = 64
    lr: float = 2e-3
    weight_decay: float = 1e-4
    clip: float = 1.0
    hidden: int = 128
    latent: int = 16
    context: int = 2
    learned_std: bool = True
    beta: float = 0.1
    kl_anneal: int = 1000
    schedule: str = "mixed"
    crop: int = 8
    shift: float = 0.1
    seed: int = 0
    val_fraction: float = 0.1
    val_seed: int = 0
    val_every: int = 250
    val_samples: int = 8
    patience: int = 0
    log_every: int = 25
    progress: bool = True
    command: str = ""


def augmented_batch(x: torch.Tensor, valid: torch.Tensor, norm: Normalisation,
                    opts: PredictorTrainOptions, rng: np.random.Generator
                    ) -> tuple[torch.Tensor, torch.Tensor]:
    """A random training batch (B, T', D): sequences start at a random frame in 0..``crop``
    (the same for the whole batch; streams start anywhere) and each sequence's keypoints move
    by one random offset in ``[-shift, shift]`` (x and y, detector units; the head's position
    is arbitrary, jacobians do not change)."""
    index = torch.from_numpy(rng.integers(len(x), size=opts.batch))
    start = int(rng.integers(min(opts.crop, x.shape[1] - 2) + 1)) if opts.crop else 0
    batch, valid = x[index, start:], valid[index, start:]
    if opts.shift:
        offset = rng.uniform(-opts.shift, opts.shift, (opts.batch, 1, 1, 2)) / norm.std[:2]
        batch = batch.view(opts.batch, batch.shape[1], -1, 6).clone()
        batch[..., :2] += torch.from_numpy(offset.astype(np.float32))
        batch = batch.flatten(2)
    return batch, valid


def _network_hparams(opts: PredictorTrainOptions, input_dim: int) -> dict:
    hparams: dict = {"input_dim": input_dim, "hidden": opts.hidden}
    if opts.kind in ("vrnn", "vae"):
        hparams.update(latent=opts.latent, learned_std=opts.learned_std)
    if opts.kind == "vae":
        hparams["context"] = opts.context
    return hparams


def _validate(network: KeypointSequenceModel, norm: Normalisation, val: KeypointData
              ) -> dict[str, OpenLoopScore]:
    return {s: evaluate_network(network, norm, val, s) for s in EVAL_SCHEDULES}


def _val_score(scores: dict[str, OpenLoopScore], reference: dict[str, float]) -> float:
    """Mean over M1 and M2 of the kp MSE relative to hold-last's (scale-free: M1's errors are
    an order of magnitude above M2's)."""
    return float(np.mean([scores[s].kp_mse / max(reference[s], 1e-12) for s in EVAL_SCHEDULES]))


def train_predictor(opts: PredictorTrainOptions) -> dict:
    """Train one predictor into ``opts.out``; returns the summary written to summary.json."""
    if opts.kind not in NETWORKS:
        raise ValueError(f"unknown kind {opts.kind!r}; choose one of: {', '.join(NETWORKS)}")
    if opts.schedule not in SCHEDULES:
        raise ValueError(f"unknown schedule {opts.schedule!r}; choose one of: "
                         f"{', '.join(SCHEDULES)}")
    started = time.time()
    torch.manual_seed(opts.seed)
    rng = np.random.default_rng(opts.seed)
    data = load_keypoint_file(opts.data)
    train_index, val_index = split_indices(len(data.kp), opts.val_fraction, opts.val_seed)
    train, val = data.subset(train_index), data.subset(val_index)
    norm = Normalisation.fit(train.kp[train.valid()])
    x_train = torch.from_numpy(norm.apply(train.kp))
    valid_train = torch.from_numpy(train.valid())
    length = data.kp.shape[1]
    network = build_network(opts.kind, **_network_hparams(opts, data.num_kp * 6))
    optimizer = torch.optim.AdamW(network.parameters(), lr=opts.lr,
                                  weight_decay=opts.weight_decay)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: 0.1 + 0.45 * (1 + math.cos(math.pi * min(s / opts.steps, 1.0))))
    out = Path(opts.out)
    out.mkdir(parents=True, exist_ok=True)
    log.info("%s: %d train / %d validation sequences of %d frames, K=%d, %d parameters",
             opts.kind, len(train.kp), len(val.kp), length, data.num_kp,
             sum(p.numel() for p in network.parameters()))

    def meta(step: int, losses: dict, scores: dict) -> dict:
        return {"command": opts.command, "options": asdict(opts), "seed": opts.seed,
                "steps": step, "time_s": round(time.time() - started, 1),
                "final_losses": losses, "validation": scores, "data": str(opts.data),
                "train_sequences": int(len(train.kp)), "val_sequences": int(len(val.kp)),
                "model_id": data.model_id, "frame_size": data.frame_size}

    reference = {s: evaluate_predictor(HoldLast, val, s).kp_mse for s in EVAL_SCHEDULES}
    best, best_step, best_state = math.inf, 0, None
    losses: dict[str, float] = {}
    scores: dict[str, dict] = {}
    step = 0
    with (out / "metrics.jsonl").open("w") as metrics, \
            tqdm(total=opts.steps, disable=not opts.progress, desc=opts.kind) as bar:
        network.train()
        for step in range(1, opts.steps + 1):
            x, valid = augmented_batch(x_train, valid_train, norm, opts, rng)
            mask = torch.from_numpy(schedule_mask(opts.schedule, x.shape[1], rng))
            beta = opts.beta * min(1.0, step / opts.kl_anneal) if opts.kl_anneal else opts.beta
            result = network.sequence_loss(x, mask.expand(opts.batch, -1), beta, valid)
            optimizer.zero_grad(set_to_none=True)
            result["loss"].backward()
            torch.nn.utils.clip_grad_norm_(network.parameters(), opts.clip)
            optimizer.step()
            scheduler.step()
            losses = {k: float(v.detach()) for k, v in result.items()}
            bar.update()
            if step % opts.log_every == 0 or step == opts.steps:
                bar.set_postfix(loss=f"{losses['loss']:.3f}", mse=f"{losses['mse']:.4f}")
                metrics.write(json.dumps({"step": step, "split": "train", **losses,
                                          "beta": beta, "lr": scheduler.get_last_lr()[0],
                                          "elapsed_s": round(time.time() - started, 2)}) + "\n")
                metrics.flush()
            if step % opts.val_every and step != opts.steps:
                continue
            current = _validate(network, norm, val)
            scores = {s: v.to_json() for s, v in current.items()}
            score = _val_score(current, reference)
            metrics.write(json.dumps({"step": step, "split": "val", **scores,
                                      "vs_hold_last": score}) + "\n")
            metrics.flush()
            save_predictor(out / "last.pt", network, norm, meta(step, losses, scores))
            if score < best:
                best, best_step = score, step
                best_state = {k: v.clone() for k, v in network.state_dict().items()}
                save_predictor(out / "predictor.pt", network, norm, meta(step, losses, scores))
            bar.set_postfix(loss=f"{losses['loss']:.3f}", m1=f"{current['m1'].kp_mse:.2e}",
                            m2=f"{current['m2'].kp_mse:.2e}")
            log.debug("step %d: validation %s", step, scores)
            if opts.patience and step - best_step >= opts.patience * opts.val_every:
                log.info("early stop at step %d: no better validation since step %d", step,
                         best_step)
                break
    if best_state is not None:
        network.load_state_dict(best_state)
    summary = _final_summary(network, norm, val, opts, best_step, step)
    summary["time_s"] = round(time.time() - started, 1)
    save_predictor(out / "predictor.pt", network, norm,
                   {**meta(best_step, losses, summary["validation"]), "final_step": step})
    (out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    with (out / "metrics.jsonl").open("a") as metrics:
        metrics.write(json.dumps({"step": step, "split": "final", **summary}) + "\n")
    log.info("%s: best step %d of %d, validation kp MSE m1 %.3g m2 %.3g (hold-last %.3g / "
             "%.3g) in %.0f s", opts.kind, best_step, step,
             summary["validation"]["m1"]["kp_mse"], summary["validation"]["m2"]["kp_mse"],
             summary["baselines"]["hold-last"]["m1"]["kp_mse"],
             summary["baselines"]["hold-last"]["m2"]["kp_mse"], summary["time_s"])
    return summary


def _final_summary(network: KeypointSequenceModel, norm: Normalisation, val: KeypointData,
                   opts: PredictorTrainOptions, best_step: int, last_step: int) -> dict:
    """Validation figures of the kept weights, sampled mode and the non-learned baselines."""
    summary: dict = {"kind": opts.kind, "best_step": best_step, "last_step": last_step,
                     "validation": {s: v.to_json()
                                    for s, v in _validate(network, norm, val).items()}}
    if network.stochastic and opts.val_samples > 1:
        summary[f"validation_sampled_{opts.val_samples}"] = {
            s: evaluate_network(network, norm, val, s, samples=opts.val_samples).to_json()
            for s in EVAL_SCHEDULES}
    summary["baselines"] = {
        cls.name: {s: evaluate_predictor(cls, val, s).to_json() for s in EVAL_SCHEDULES}
        for cls in (HoldLast, ConstantVelocity)}
    return summary


def build_parser() -> argparse.ArgumentParser:
    """The ``kpvid-train predictor`` argument parser."""
    parser = argparse.ArgumentParser(
        prog="kpvid-train predictor",
        description="Train a keypoint predictor (vrnn, rnn or vae) on a kpvid-extract .npz file, "
                    "on its own open-loop rollouts. Writes RUN/predictor.pt (best validation), "
                    "RUN/last.pt, RUN/metrics.jsonl and RUN/summary.json.")
    parser.add_argument("--kind", choices=sorted(NETWORKS), required=True,
                        help="vrnn: variational RNN (the papers' model); rnn: GRU baseline; "
                             "vae: per-frame conditional VAE baseline")
    parser.add_argument("--data", type=Path, required=True,
                        help="keypoint sequences (.npz from kpvid-extract)")
    parser.add_argument("--out", type=Path, required=True, help="run folder")
    parser.add_argument("--steps", type=positive_int, default=3000,
                        help="optimizer steps (default: 3000)")
    parser.add_argument("--batch", type=positive_int, default=64,
                        help="sequences per step (default: 64)")
    parser.add_argument("--lr", type=float, default=2e-3,
                        help="AdamW learning rate, cosine-decayed to a tenth (default: 2e-3)")
    parser.add_argument("--weight-decay", type=non_negative, default=1e-4,
                        help="AdamW weight decay (default: 1e-4)")
    parser.add_argument("--clip", type=float, default=1.0,
                        help="gradient norm clip (default: 1.0)")
    parser.add_argument("--hidden", type=positive_int, default=128,
                        help="GRU state and layer width (default: 128)")
    parser.add_argument("--latent", type=positive_int, default=16,
                        help="latent size, vrnn and vae (default: 16)")
    parser.add_argument("--context", type=positive_int, default=2,
                        help="previous sets the vae conditions on (default: 2)")
    parser.add_argument("--fixed-std", action="store_true",
                        help="vrnn/vae decoder variance fixed at 1 in normalised units "
                             "(default: learned per dimension)")
    parser.add_argument("--beta", type=non_negative, default=0.1,
                        help="weight of the KL term, vrnn and vae; at 1.0 the VRNN's posterior "
                             "collapses onto its prior on faces-64 (default: 0.1)")
    parser.add_argument("--kl-anneal", type=int, default=1000,
                        help="steps over which beta ramps up from 0, 0 for none (default: 1000)")
    parser.add_argument("--schedule", choices=SCHEDULES, default="mixed",
                        help="observe/predict pattern of training rollouts: m1 (observe 5, "
                             "predict the rest), m2 (observe 1, predict 1), mixed (m1, m2 or "
                             "random observe 1-5 / predict 1-5 groups; default)")
    parser.add_argument("--crop", type=int, default=8,
                        help="augmentation: training sequences start at a random frame up to "
                             "this one, 0 for none (default: 8)")
    parser.add_argument("--shift", type=non_negative, default=0.1,
                        help="augmentation: random translation of each training sequence's "
                             "keypoints up to this much (detector units, frame = [-1, 1]), 0 for "
                             "none (default: 0.1)")
    parser.add_argument("--seed", type=int, default=0, help="training seed (default: 0)")
    parser.add_argument("--threads", type=positive_int, default=None,
                        help="CPU threads for torch (default: torch's choice)")
    parser.add_argument("--val-fraction", type=float, default=0.1,
                        help="share of the sequences held out for validation (default: 0.1)")
    parser.add_argument("--val-seed", type=int, default=0,
                        help="seed of the validation split, kept apart from --seed so runs "
                             "share it (default: 0)")
    parser.add_argument("--val-every", type=positive_int, default=250,
                        help="steps between validations and checkpoints (default: 250)")
    parser.add_argument("--val-samples", type=int, default=8,
                        help="particles for the final sampled-mode validation of vrnn/vae, "
                             "0 or 1 to skip (default: 8)")
    parser.add_argument("--patience", type=int, default=0,
                        help="stop after this many validations without improvement, 0 never "
                             "(default: 0)")
    parser.add_argument("--log-every", type=positive_int, default=25,
                        help="steps between metrics.jsonl training records (default: 25)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    return parser


def train_predictor_main(argv: list[str] | None = None) -> int:
    """``kpvid-train predictor``: parse ``argv`` and train; exit status 0, or 2 on bad input."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.threads:
        torch.set_num_threads(args.threads)
    values = {f.name: getattr(args, f.name) for f in fields(PredictorTrainOptions)
              if hasattr(args, f.name)}
    opts = PredictorTrainOptions(**{**values, "data": str(args.data), "out": str(args.out)},
                                 learned_std=not args.fixed_std, progress=not args.no_progress,
                                 command=shlex.join(["kpvid-train", "predictor", *argv]))
    try:
        train_predictor(opts)
    except (CheckpointError, ValueError) as exc:
        log.error("%s", exc)
        return 2
    return 0
