"""kpvid-receive and kpvid-send as the user runs them: separate processes, flags, Ctrl-C."""

from __future__ import annotations

import json
import signal
import ssl
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import av
import numpy as np
import pytest
import torch
import yaml

from kpvid.demo.streaming import build_parser as demo_parser
from kpvid.demo.streaming import run_demo
from kpvid.models import build_networks
from kpvid.models.learned_predictor import Normalisation, build_network, save_predictor
from kpvid.receiver.cli import build_parser as receiver_parser
from kpvid.receiver.cli import main as receiver_main
from kpvid.receiver.cli import resolve_tokens
from kpvid.receiver.local import free_port
from kpvid.receiver.tls import CERT_FILE
from tests.edge_harness import EDGE_TEST_CHECKPOINT


def receive(*args: str, **kwargs) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "kpvid.receiver.cli", *args],
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, **kwargs)


@pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")
def test_gpu_without_cuda_is_a_clear_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        receiver_main(["--gpu", "0"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert "CUDA is not available" in err and "--cpu" in err


@pytest.mark.parametrize("flags, words", [
    (["--checkpoint", "none.pth.tar"], "no such file"),
    (["--port", "70000"], "not a TCP port"),
    (["--cert", "c.pem"], "both --cert and --key"),
    (["--cert", "c.pem", "--key", "k.pem"], "c.pem"),
    (["--predictor", "oracle"], "invalid choice"),
    (["--predictor", "hold-last", "--predictor-checkpoint", "p.pt"], "is for a learned"),
])
def test_bad_receiver_flags_exit_2_with_a_message(tmp_path, monkeypatch, capsys, flags, words):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(SystemExit) as exit_info:
        receiver_main(["--cpu", "--state-dir", str(tmp_path), *flags])
    assert exit_info.value.code == 2
    assert words in capsys.readouterr().err


@pytest.mark.parametrize("num_kp, words", [(2, "trained on 2 keypoints per set, but the "
                                               "keypoint model has 10"),
                                            (10, "'another-model', but the keypoint model is")])
def test_a_predictor_for_another_model_is_refused_naming_both(tmp_path, caplog, num_kp, words):
    checkpoint = save_predictor(tmp_path / "p.pt", build_network("rnn", input_dim=num_kp * 6),
                                Normalisation(np.zeros(6), np.ones(6)), model_id="another-model")
    code = receiver_main(["--cpu", "--state-dir", str(tmp_path), "--port", str(free_port()),
                          "--token", "t", "--predictor", "rnn",
                          "--predictor-checkpoint", str(checkpoint)])
    assert code == 2
    assert words in caplog.text


def test_a_checkpoint_that_does_not_load_is_one_clear_line(tmp_path, caplog, tiny_config):
    kp_detector, generator = build_networks(tiny_config)
    checkpoint = tmp_path / "tiny.pth.tar"
    torch.save({"kp_detector": kp_detector.state_dict(), "generator": generator.state_dict()},
               checkpoint)
    argv = ["--cpu", "--state-dir", str(tmp_path), "--port", str(free_port()), "--token", "t",
            "--checkpoint", str(checkpoint)]
    assert receiver_main(argv) == 2
    assert "carries no config" in caplog.text and "Traceback" not in caplog.text
    # with its config it loads, and the default learned predictor, shipped only for the
    # shipped models, is refused with what to do instead
    config = tmp_path / "tiny.yaml"
    config.write_text(yaml.safe_dump(tiny_config))
    caplog.clear()
    assert receiver_main([*argv, "--config", str(config)]) == 2
    assert "no vrnn predictor is shipped for model 'tiny'" in caplog.text
    assert "kpvid-train predictor" in caplog.text and "constant-velocity" in caplog.text


def test_the_demo_refuses_a_checkpoint_that_does_not_load_before_starting_anything(tmp_path):
    args = demo_parser().parse_args(["--checkpoint", str(tmp_path / "none.pth.tar"),
                                     "--out", str(tmp_path / "demo")])
    with pytest.raises(SystemExit, match="--checkpoint .*none.pth.tar: checkpoint not found"):
        run_demo(args, quiet=True)
    assert not (tmp_path / "demo" / "receiver.log").exists()


def test_ctrl_c_mid_stream_finalises_the_recording(tmp_path: Path):
    port = free_port()
    receiver = receive("--cpu", "--host", "127.0.0.1", "--port", str(port), "--token", "t",
                       "--state-dir", str(tmp_path / "tls"), "--record", str(tmp_path / "rec"),
                       "--threads", "1", "--checkpoint", str(EDGE_TEST_CHECKPOINT))  # 64x64: quick
    sender = None
    try:
        cert = tmp_path / "tls" / CERT_FILE
        context = None
        deadline = time.monotonic() + 90
        status: dict = {}
        while time.monotonic() < deadline:  # up, then a stream playing
            assert receiver.poll() is None, receiver.stdout.read()
            try:
                context = context or ssl.create_default_context(cafile=str(cert))
                request = urllib.request.Request(f"https://localhost:{port}/api/streams",
                                                 headers={"Authorization": "Bearer t"})
                with urllib.request.urlopen(request, context=context, timeout=2) as response:
                    status = json.load(response)
            except (OSError, ssl.SSLError):
                time.sleep(0.3)
                continue
            if sender is None:
                sender = subprocess.Popen(
                    [sys.executable, "-m", "kpvid.sender.cli", "--synthetic", "faces",
                     "--to", f"localhost:{port}", "--ca", str(cert), "--token", "t",
                     "--stream", "cli", "--checkpoint", str(EDGE_TEST_CHECKPOINT)],
                    stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                    text=True)
            if status["streams"] and status["streams"][0]["frames"]["out"] >= 30:
                break
            time.sleep(0.3)
        assert status["streams"], status
        receiver.send_signal(signal.SIGINT)
        output, _ = receiver.communicate(timeout=30)
        assert receiver.returncode == 0, output
    finally:
        for process in (receiver, sender):
            if process is not None and process.poll() is None:
                process.kill()
    [recording] = (tmp_path / "rec").glob("cli-*.mp4")
    with av.open(str(recording)) as container:
        frames = sum(1 for _ in container.decode(video=0))
    assert frames >= 30  # a finalised, playable file with every frame played


@pytest.mark.parametrize("flags, words", [
    (["--max-streams", "0"], "--max-streams and --max-viewers must be at least 1"),
    (["--max-viewers", "-3"], "--max-streams and --max-viewers must be at least 1"),
    (["--offers-per-second", "-1"], "--offers-per-second must be"),
    (["--offers-per-second", "nan"], "--offers-per-second must be"),
])
def test_bad_limit_flags_exit_2_with_a_message(tmp_path, capsys, flags, words):
    with pytest.raises(SystemExit) as exit_info:
        receiver_main(["--cpu", "--state-dir", str(tmp_path), *flags])
    assert exit_info.value.code == 2
    assert words in capsys.readouterr().err


def test_receiver_help_explains_tokens_and_limits():
    text = receiver_parser().format_help()
    for flag in ("--token", "--send-token", "--view-token", "--max-streams", "--max-viewers",
                 "--offers-per-second", "KPVID_SEND_TOKEN", "KPVID_VIEW_TOKEN"):
        assert flag in text, flag
    args = receiver_parser().parse_args([])
    assert (args.max_streams, args.max_viewers, args.offers_per_second) == (16, 32, 2.0)


@pytest.mark.parametrize("env, flags, expected", [
    ({"KPVID_TOKEN": "t"}, [], ("t", "t")),
    ({"KPVID_TOKEN": "t", "KPVID_VIEW_TOKEN": "v"}, [], ("t", "v")),
    ({"KPVID_SEND_TOKEN": "s", "KPVID_VIEW_TOKEN": "v"}, [], ("s", "v")),
    ({"KPVID_SEND_TOKEN": "s"}, ["--send-token", "S", "--token", "T"], ("S", "T")),
])
def test_send_and_view_tokens_default_to_the_token(monkeypatch, capsys, env, flags, expected):
    for name in ("KPVID_TOKEN", "KPVID_SEND_TOKEN", "KPVID_VIEW_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert resolve_tokens(receiver_parser().parse_args(flags)) == expected
    assert capsys.readouterr().out == ""  # nothing made up, nothing printed


def test_a_missing_token_is_made_up_and_printed(monkeypatch, capsys):
    for name in ("KPVID_TOKEN", "KPVID_SEND_TOKEN", "KPVID_VIEW_TOKEN"):
        monkeypatch.delenv(name, raising=False)
    send, view = resolve_tokens(receiver_parser().parse_args(["--send-token", "s"]))
    assert send == "s" and len(view) >= 16
    assert view in capsys.readouterr().out
