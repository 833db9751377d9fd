"""PNG plots of ``kpvid-eval predict`` results like the papers' Figures 6-11: an error against
the frame number, one line per predictor with its spread over initialisations as a band."""

from __future__ import annotations

from pathlib import Path

METRICS = {"kp_mse": "keypoint MSE", "frame_mse": "frame MSE", "psnr": "PSNR (dB)"}


def write_plots(results: dict, out_dir: str | Path) -> list[Path]:
    """One PNG per protocol and metric, ``<protocol>_<mode>_<metric>.png``; the paths written.
    The frame metrics also show the all-keypoints reference of reconstruction mode (dashed)."""
    try:
        import matplotlib
    except ImportError as exc:
        raise RuntimeError("plots need matplotlib: pip install 'matplotlib>=3.8'") from exc
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    meta = results["meta"]
    mode = meta["mode"]
    written = []
    for protocol, entries in results.items():
        if protocol == "meta":
            continue
        reference = meta.get("reference", {}).get(protocol)
        for metric, label in METRICS.items():
            fig, ax = plt.subplots(figsize=(6, 4), dpi=120)
            for key, entry in entries.items():
                frames = [row["frame"] for row in entry["per_frame"]]
                mean = [row[metric] for row in entry["per_frame"]]
                std = [row["std"][metric] for row in entry["per_frame"]]
                spread = entry["inits"] > 1
                line, = ax.plot(frames, mean, marker=".",
                                label=f"{key} ({entry['inits']} inits, band ± std)" if spread
                                else f"{key} (1 init)")
                if spread:
                    ax.fill_between(frames, [m - s for m, s in zip(mean, std)],
                                    [m + s for m, s in zip(mean, std)],
                                    color=line.get_color(), alpha=0.2, linewidth=0)
            if reference is not None and metric in reference:
                ax.plot([row["frame"] for row in reference["per_frame"]],
                        [row[metric] for row in reference["per_frame"]], color="black",
                        linestyle="--", linewidth=1, label="all keypoints (no prediction)")
            ax.set_xlabel("frame")
            ax.set_ylabel(label)
            ax.set_title(f"{protocol.upper()}, {mode}: {label} on predicted frames "
                         f"({meta['videos'][protocol]} videos)", fontsize=9)
            ax.grid(alpha=0.3)
            ax.legend(fontsize=8)
            fig.tight_layout()
            path = out_dir / f"{protocol}_{mode}_{metric}.png"
            fig.savefig(path)
            plt.close(fig)
            written.append(path)
    return written
