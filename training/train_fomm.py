"""FOMM reconstruction training (``kpvid-train fomm``), single process or DDP under torchrun.

Each step takes a (source, driving) pair of frames from one video, detects keypoints in both,
rebuilds the driving frame from the source and is scored by a multi-scale pyramid loss (L1, or
VGG19 perceptual with a user-supplied weight file), optionally 1 - SSIM (kpvid's ``ssim``
weight), keypoint/jacobian equivariance under random affine + TPS warps, and optionally LSGAN +
feature matching. Checkpoints use the official layout. kpvid's ``train_params.frozen`` lists
modules that never train, and ``--grow`` starts a model for larger frames from a smaller one
(:mod:`kpvid.training.grow`), training only its new blocks for ``grow_warmup_steps`` steps.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed as dist
import yaml
from torch import nn
from torch.nn.parallel import DistributedDataParallel
from torch.utils.data import ConcatDataset, DataLoader, DistributedSampler
from tqdm import tqdm

from kpvid.models import MultiScaleDiscriminator, build_networks, load_config
from kpvid.models.checkpoint import load_state_strict, read_checkpoint
from kpvid.models.mesh_keypoints import MeshKeypoints

from .dataset import DatasetRepeater, FramesDataset
from .grow import grow_into
from .losses import (
    ImagePyramide,
    Transform,
    Vgg19,
    equivariance_losses,
    keypoint_landmark_error,
    keypoint_separation,
)
from .metrics import ssim
from .visualize import save_png, training_grid

log = logging.getLogger(__name__)

DEFAULT_RECONSTRUCTION_WEIGHT = 10.0


@dataclass
class TrainOptions:
    """Everything ``kpvid-train fomm`` takes besides the config file."""

    config: str
    data: list[str]
    out: str
    resume: str | None = None
    init: str | None = None
    grow: str | None = None
    vgg: str | None = None
    device: str = "cpu"
    max_steps: int | None = None
    seed: int = 0
    workers: int = 0
    log_every: int = 25
    image_every: int = 500
    save_every_s: float = 600.0
    progress: bool = True


class Freezer:
    """Which weights train: never those of the config's ``frozen`` modules (kept in eval mode,
    so their batch norms use their running statistics, as at inference), and while a grown
    model warms up (``step < warmup_steps``) none of those ``carried`` over from the small
    model (whose batch norms are held too)."""

    def __init__(self, roots: dict[str, nn.Module], frozen: Sequence[str],
                 carried: Sequence[str], warmup_steps: int) -> None:
        self.frozen = []
        for name in frozen:
            root, _, rest = name.partition(".")
            if root not in roots:
                raise ValueError(f"train_params.frozen: {name!r} is not in "
                                 f"{' or '.join(roots)}")
            try:
                self.frozen.append(roots[root].get_submodule(rest) if rest else roots[root])
            except AttributeError:
                raise ValueError(f"train_params.frozen: no module {name!r}") from None
        carried_set = set(carried)
        frozen_params = {id(p) for m in self.frozen for p in m.parameters()}
        self.carried = [p for root, module in roots.items()  # those the warm-up holds
                        for name, p in module.named_parameters()
                        if f"{root}.{name}" in carried_set and id(p) not in frozen_params]
        self.carried_norms = [m for root, module in roots.items()
                              for name, m in module.named_modules()
                              if isinstance(m, nn.modules.batchnorm._BatchNorm)
                              and f"{root}.{name}.weight" in carried_set]
        self.warmup_steps = warmup_steps if carried else 0
        for module in self.frozen:
            module.requires_grad_(False)

    def apply(self, step: int) -> None:
        """Set what trains at ``step``; call after ``train()`` on the whole model."""
        warming = step < self.warmup_steps
        for p in self.carried:
            p.requires_grad_(not warming)
        for module in self.frozen + (self.carried_norms if warming else []):
            module.eval()


class GeneratorFullModel(nn.Module):
    """Keypoint detector + generator + every generator-side loss, as one module for DDP."""

    def __init__(self, kp_extractor: nn.Module, generator: nn.Module,
                 discriminator: nn.Module | None, train_params: dict, vgg: Vgg19 | None = None):
        super().__init__()
        self.kp_extractor = kp_extractor
        self.generator = generator
        self.discriminator = discriminator
        self.train_params = train_params
        self.scales = train_params["scales"]
        self.pyramid = ImagePyramide(self.scales, generator.num_channels)
        self.loss_weights = train_params["loss_weights"]
        self.vgg = vgg

    def forward(self, source: torch.Tensor, driving: torch.Tensor,
                landmarks: torch.Tensor | None = None, mesh: torch.Tensor | None = None
                ) -> tuple[dict[str, torch.Tensor], dict[str, torch.Tensor]]:
        """Losses and outputs for a batch; ``landmarks`` (B x 2 x K x 2, source and driving,
        NaN where unknown) feed the landmark prior; ``mesh`` (B x 2 x 468 x 2) are the frames'
        FaceMesh landmarks, which a FaceMesh-driven model takes its keypoints from."""
        weights = self.loss_weights
        if isinstance(self.kp_extractor, MeshKeypoints):
            if mesh is None:
                raise ValueError("a FaceMesh-driven model trains on FaceMesh landmarks; the "
                                 "batch has none")
            kp_source, kp_driving = self.kp_extractor(mesh[:, 0]), self.kp_extractor(mesh[:, 1])
        else:
            kp_source = self.kp_extractor(source)
            kp_driving = self.kp_extractor(driving)
        generated = self.generator(source, kp_source=kp_source, kp_driving=kp_driving)
        generated.update({"kp_source": kp_source, "kp_driving": kp_driving})
        losses: dict[str, torch.Tensor] = {}

        pyramid_real = self.pyramid(driving)
        pyramid_fake = self.pyramid(generated["prediction"])
        if self.vgg is not None:
            total = 0.0
            for scale in self.scales:
                fake_feats = self.vgg(pyramid_fake[f"prediction_{scale}"])
                real_feats = self.vgg(pyramid_real[f"prediction_{scale}"])
                for weight, f, r in zip(weights["perceptual"], fake_feats, real_feats):
                    total = total + weight * torch.abs(f - r.detach()).mean()
            losses["perceptual"] = total
        else:
            weight = weights.get("reconstruction", DEFAULT_RECONSTRUCTION_WEIGHT)
            losses["reconstruction"] = weight * sum(
                torch.abs(pyramid_fake[f"prediction_{s}"] - pyramid_real[f"prediction_{s}"]).mean()
                for s in self.scales)
        if weights.get("ssim", 0) != 0:
            losses["ssim"] = weights["ssim"] * (1 - ssim(generated["prediction"], driving)).mean()

        if weights.get("generator_gan", 0) != 0 and self.discriminator is not None:
            kp_d = {k: v.detach() for k, v in kp_driving.items()}
            fake_maps = self.discriminator(pyramid_fake, kp=kp_d)
            real_maps = self.discriminator(pyramid_real, kp=kp_d)
            losses["gen_gan"] = sum(
                weights["generator_gan"] * ((1 - fake_maps[f"prediction_map_{s}"]) ** 2).mean()
                for s in self.discriminator.scales)
            if sum(weights["feature_matching"]) != 0:
                total = 0.0
                for s in self.discriminator.scales:
                    pairs = zip(real_maps[f"feature_maps_{s}"], fake_maps[f"feature_maps_{s}"])
                    for weight, (r, f) in zip(weights["feature_matching"], pairs):
                        total = total + weight * torch.abs(r - f).mean()
                losses["feature_matching"] = total

        # the keypoint detector's own losses, unless it is frozen (they would train nothing)
        detector_trains = any(p.requires_grad for p in self.kp_extractor.parameters())
        if weights.get("keypoint_landmarks", 0) != 0 and landmarks is not None \
                and detector_trains:
            losses["keypoint_landmarks"] = weights["keypoint_landmarks"] * (
                keypoint_landmark_error(kp_source["value"], landmarks[:, 0])
                + keypoint_landmark_error(kp_driving["value"], landmarks[:, 1]))

        if weights.get("keypoint_separation", 0) != 0 and detector_trains:
            losses["keypoint_separation"] = weights["keypoint_separation"] * keypoint_separation(
                torch.cat([kp_source["value"], kp_driving["value"]]))

        equivariance = weights["equivariance_value"] != 0 or weights["equivariance_jacobian"] != 0
        if equivariance and detector_trains:
            transform = Transform(driving.shape[0], device=driving.device,
                                  **self.train_params["transform_params"])
            transformed_kp = self.kp_extractor(transform.transform_frame(driving))
            value, jacobian = equivariance_losses(kp_driving, transformed_kp, transform)
            if weights["equivariance_value"] != 0:
                losses["equivariance_value"] = weights["equivariance_value"] * value
            if weights["equivariance_jacobian"] != 0:
                losses["equivariance_jacobian"] = weights["equivariance_jacobian"] * jacobian
        return losses, generated


def discriminator_loss(discriminator: nn.Module, pyramid: ImagePyramide, driving: torch.Tensor,
                       generated: dict, weight: float) -> torch.Tensor:
    """LSGAN discriminator loss: real -> 1, rebuilt -> 0."""
    kp_d = {k: v.detach() for k, v in generated["kp_driving"].items()}
    real_maps = discriminator(pyramid(driving), kp=kp_d)
    fake_maps = discriminator(pyramid(generated["prediction"].detach()), kp=kp_d)
    total = 0.0
    for s in discriminator.scales:
        real, fake = real_maps[f"prediction_map_{s}"], fake_maps[f"prediction_map_{s}"]
        total = total + weight * ((1 - real) ** 2 + fake**2).mean()
    return total


def _distributed() -> tuple[int, int, int]:
    """(rank, local_rank, world_size); starts the process group under torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world == 1:
        return 0, 0, 1
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if torch.cuda.is_available() else "gloo")
    return dist.get_rank(), int(os.environ.get("LOCAL_RANK", "0")), world


def _unwrap(module: nn.Module) -> nn.Module:
    return module.module if isinstance(module, DistributedDataParallel) else module


def train(opts: TrainOptions) -> Path:
    """Run training; returns the path of the last checkpoint written."""
    config = load_config(opts.config)
    rank, local_rank, world = _distributed()
    device = torch.device(opts.device)
    if device.type == "cuda" and world > 1:
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    torch.manual_seed(opts.seed + rank)

    train_params = config.get("train_params")
    if not train_params:
        raise ValueError(f"config {opts.config} has no train_params section")
    dataset_params = config.get("dataset_params", {})
    frame_shape = tuple(dataset_params.get("frame_shape", (256, 256, 3)))
    num_kp = config["model_params"]["common_params"]["num_kp"]
    landmark_prior = train_params["loss_weights"].get("keypoint_landmarks", 0) != 0
    mesh_driven = "mesh_keypoints" in config["model_params"]
    dataset = ConcatDataset([
        FramesDataset(root, frame_shape=frame_shape, is_train=True, random_seed=opts.seed,
                      augmentation_params=dataset_params.get("augmentation_params"),
                      track_points=num_kp if landmark_prior else 0, mesh_landmarks=mesh_driven)
        for root in opts.data])
    dataset = DatasetRepeater(dataset, train_params["num_repeats"])
    sampler = DistributedSampler(dataset, shuffle=True) if world > 1 else None
    batch_size = train_params["batch_size"]
    if len(dataset) < batch_size * world:
        raise ValueError(f"{opts.data}: {len(dataset)} training pairs per epoch is fewer than one "
                         f"batch of {batch_size} x {world} process(es); add videos or num_repeats")
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=sampler is None, sampler=sampler,
                        num_workers=opts.workers, drop_last=True,
                        persistent_workers=opts.workers > 0)

    kp_detector, generator = build_networks(config)
    model_params = config["model_params"]
    if mesh_driven:  # its geometry, from the shipped photograph fits (a resume loads the same)
        from .mesh_tracks import facemesh_keypoints

        kp_detector = facemesh_keypoints(**model_params["mesh_keypoints"])
    discriminator = MultiScaleDiscriminator(**model_params["discriminator_params"],
                                            **model_params["common_params"])
    weights = train_params["loss_weights"]
    use_gan = weights.get("generator_gan", 0) != 0
    vgg = Vgg19(opts.vgg) if opts.vgg else None
    full = GeneratorFullModel(kp_detector, generator, discriminator if use_gan else None,
                              train_params, vgg).to(device, memory_format=torch.channels_last)
    discriminator.to(device)

    opt_gen = torch.optim.Adam(generator.parameters(), lr=train_params["lr_generator"],
                               betas=(0.5, 0.999))
    # (a FaceMesh-driven model's keypoints have nothing to learn: a no-op optimiser keeps the
    # checkpoint layout)
    opt_kp = torch.optim.Adam(list(kp_detector.parameters()) or [torch.zeros(1)],
                              lr=train_params["lr_kp_detector"], betas=(0.5, 0.999))
    opt_disc = torch.optim.Adam(discriminator.parameters(), lr=train_params["lr_discriminator"],
                                betas=(0.5, 0.999))

    out = Path(opts.out)
    start_epoch, step = 0, 0
    carried: tuple[str, ...] = ()
    if opts.grow:  # weights only: a model for larger frames from a smaller one
        carried = grow_into(kp_detector, generator, read_checkpoint(opts.grow)).carried
    if opts.init:  # weights only: a curriculum from another run (another data set, say)
        ckpt = read_checkpoint(opts.init)
        if mesh_driven:  # the other model's detector has no place here, its generator does
            load_state_strict(generator, ckpt["generator"], "generator")
            log.info("initialised the generator from %s", opts.init)
        else:
            load_state_strict(kp_detector, ckpt["kp_detector"], "kp_detector")
            load_state_strict(generator, ckpt["generator"], "generator")
            log.info("initialised the keypoint detector and generator from %s", opts.init)
    if opts.resume:
        ckpt = read_checkpoint(opts.resume)
        load_state_strict(kp_detector, ckpt["kp_detector"], "kp_detector")
        load_state_strict(generator, ckpt["generator"], "generator")
        if "discriminator" in ckpt:
            load_state_strict(discriminator, ckpt["discriminator"], "discriminator")
        for name, opt in (("optimizer_generator", opt_gen), ("optimizer_kp_detector", opt_kp),
                          ("optimizer_discriminator", opt_disc)):
            if name in ckpt:
                opt.load_state_dict(ckpt[name])
        step = int(ckpt.get("step", (int(ckpt.get("epoch", -1)) + 1) * len(loader)))
        start_epoch = step // len(loader)  # a checkpoint from mid-epoch finishes that epoch
        carried = tuple(ckpt.get("grown_carried", ()))
        log.info("resumed from %s at epoch %d, step %d", opts.resume, start_epoch, step)

    freezer = Freezer({"kp_detector": kp_detector, "generator": generator},
                      train_params.get("frozen", []), carried,
                      int(train_params.get("grow_warmup_steps", 0)))
    milestones = train_params["epoch_milestones"]
    schedulers = [torch.optim.lr_scheduler.MultiStepLR(o, milestones, gamma=0.1,
                                                       last_epoch=start_epoch - 1)
                  for o in ((opt_gen, opt_kp, opt_disc) if use_gan else (opt_gen, opt_kp))]
    if world > 1:
        if device.type == "cuda":
            full = nn.SyncBatchNorm.convert_sync_batchnorm(full)
        full = DistributedDataParallel(full, device_ids=[local_rank] if device.type == "cuda"
                                       else None)
        if use_gan:
            discriminator = DistributedDataParallel(
                discriminator, device_ids=[local_rank] if device.type == "cuda" else None)

    total_steps = train_params["num_epochs"] * len(loader)
    if opts.max_steps is not None:
        total_steps = min(total_steps, opts.max_steps)
    is_main = rank == 0
    if is_main:
        out.mkdir(parents=True, exist_ok=True)
        with open(out / "config.yaml", "w") as f:
            yaml.safe_dump(config, f, sort_keys=False)
    metrics_file = open(out / "metrics.jsonl", "a") if is_main else None  # noqa: SIM115
    bar = tqdm(total=total_steps, initial=step, disable=not (opts.progress and is_main),
               desc="fomm", dynamic_ncols=True)

    def save(epoch_done: int, checkpoint_freq: int) -> Path:
        return _save(out, config, kp_detector, generator, discriminator if use_gan else None,
                     (opt_gen, opt_kp, opt_disc), epoch_done, step, checkpoint_freq, carried)

    started = last_saved = time.time()
    last_ckpt = out / "checkpoints" / "latest.pth.tar"
    epoch = start_epoch
    previous_handler = _interrupt_on_sigterm()
    try:
        while step < total_steps:
            if sampler is not None:
                sampler.set_epoch(epoch)
            for batch in loader:
                if step >= total_steps or step >= (epoch + 1) * len(loader):
                    break
                full.train()
                freezer.apply(step)
                # channels-last: about 30% faster convolutions on a CPU, same numbers
                source = batch["source"].to(device, memory_format=torch.channels_last)
                driving = batch["driving"].to(device, memory_format=torch.channels_last)
                losses, generated = full(source, driving, batch.get("landmarks"),
                                         batch.get("mesh"))
                loss = sum(losses.values())
                opt_gen.zero_grad(set_to_none=True)
                opt_kp.zero_grad(set_to_none=True)
                loss.backward()
                opt_gen.step()
                opt_kp.step()
                if use_gan and weights.get("discriminator_gan", 0) != 0:
                    opt_disc.zero_grad(set_to_none=True)
                    d_loss = discriminator_loss(discriminator, _unwrap(full).pyramid, driving,
                                                generated, weights["discriminator_gan"])
                    d_loss.backward()
                    opt_disc.step()
                    losses["disc_gan"] = d_loss
                step += 1
                values = {k: float(v.detach()) for k, v in losses.items()}
                bar.update(1)
                bar.set_postfix({k[:12]: f"{v:.3f}" for k, v in values.items()})
                if metrics_file is not None and (step % opts.log_every == 0 or step == 1):
                    record = {"step": step, "epoch": epoch, "loss": sum(values.values()),
                              **values, "lr": opt_gen.param_groups[0]["lr"],
                              "elapsed_s": round(time.time() - started, 1)}
                    metrics_file.write(json.dumps(record) + "\n")
                    metrics_file.flush()
                if is_main and opts.image_every and step % opts.image_every == 0:
                    grid = training_grid(source, driving, generated,
                                         generated["kp_source"]["value"],
                                         generated["kp_driving"]["value"])
                    save_png(out / "images" / f"step_{step:07d}.png", grid)
                if is_main and time.time() - last_saved >= opts.save_every_s:
                    last_ckpt, last_saved = save(epoch - 1, 0), time.time()
            if step < (epoch + 1) * len(loader):  # stopped by max_steps within the epoch
                if is_main:
                    last_ckpt = save(epoch - 1, 0)
                break
            for scheduler in schedulers:
                scheduler.step()
            if is_main:
                last_ckpt, last_saved = save(epoch, train_params["checkpoint_freq"]), time.time()
            epoch += 1
    except KeyboardInterrupt:
        log.warning("interrupted at step %d: saving the checkpoint", step)
        if is_main:
            last_ckpt = save(epoch - 1, 0)
        raise
    finally:
        if previous_handler is not None:
            signal.signal(signal.SIGTERM, previous_handler)
        bar.close()
        if metrics_file is not None:
            metrics_file.close()
        if world > 1 and dist.is_initialized():
            dist.destroy_process_group()
    if is_main:
        log.info("trained %d steps in %.0f s; checkpoint %s", step, time.time() - started,
                 last_ckpt)
    return last_ckpt


def _interrupt_on_sigterm():
    """Make SIGTERM stop training like Ctrl-C (which saves a resumable checkpoint): a run in
    the background or under a job scheduler ignores SIGINT. Returns the previous handler, or
    None off the main thread, where no handler can be set."""
    if threading.current_thread() is not threading.main_thread():
        return None

    def interrupt(signum: int, frame: object) -> None:
        raise KeyboardInterrupt

    return signal.signal(signal.SIGTERM, interrupt)


def _save(out: Path, config: dict, kp_detector: nn.Module, generator: nn.Module,
          discriminator: nn.Module | None, optimizers: tuple, epoch: int, step: int,
          checkpoint_freq: int, carried: Sequence[str] = ()) -> Path:
    """Write ``checkpoints/latest.pth.tar`` (official layout + config and step, the
    discriminator only when it trains; ``epoch`` is the last one finished, ``grown_carried``
    what a grown model took from the small one) and, every ``checkpoint_freq`` epochs, an
    ``<epoch>-checkpoint.pth.tar`` copy as the official code does."""
    opt_gen, opt_kp, opt_disc = optimizers
    state = {
        "kp_detector": kp_detector.state_dict(),
        "generator": generator.state_dict(),
        "optimizer_generator": opt_gen.state_dict(),
        "optimizer_kp_detector": opt_kp.state_dict(),
        "epoch": epoch,
        "step": step,
        "config": config,
        "grown_carried": list(carried),
    }
    if discriminator is not None:
        state["discriminator"] = _unwrap(discriminator).state_dict()
        state["optimizer_discriminator"] = opt_disc.state_dict()
    folder = out / "checkpoints"
    folder.mkdir(parents=True, exist_ok=True)
    latest = folder / "latest.pth.tar"
    tmp = latest.with_suffix(".tmp")
    torch.save(state, tmp)
    tmp.replace(latest)
    if checkpoint_freq and (epoch + 1) % checkpoint_freq == 0:
        shutil.copyfile(latest, folder / f"{str(epoch).zfill(8)}-checkpoint.pth.tar")
    return latest

