#!/usr/bin/env python3
"""Coverage-guided fuzzing (atheris, libFuzzer) of everything the edge decodes from a sender:
data-channel messages, keypoint payloads of every codec through a stream's decoder (with its
reference history and held payloads), source-image chunks and the images they make.

The contract under test: bad input raises ``ProtocolError`` (which the edge counts and drops)
and nothing else. Any other exception is a crash that libFuzzer reports with the input that
caused it. Not part of the test suite (it runs until stopped or ``-max_total_time``):

    pip install atheris
    python scripts/fuzz-decoders.py -max_total_time=120 -print_final_stats=1

docs/reliability.md has the last run's figures.
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

with atheris.instrument_imports():
    from kpvid.protocol import (
        CODEC_NAMES,
        KeypointDecoder,
        Keypoints,
        ProtocolError,
        SourceImageAssembler,
        SourceImageChunk,
        decode_message,
        decode_source_image,
    )

NUM_KP = 10  # the shipped model's
ARTIFACTS = Path("runs/fuzz")
decoders = {codec: KeypointDecoder(codec, NUM_KP) for codec in CODEC_NAMES}
assembler = SourceImageAssembler()


def fuzz_one(data: bytes) -> None:
    """One input: its first byte picks what it goes to, like the edge's message handling."""
    if not data:
        return
    target, body = data[0] % 3, data[1:]
    try:
        if target == 0:  # a message off either channel, then what the edge does with it
            message = decode_message(body)
            if isinstance(message, Keypoints) and message.codec in decoders:
                decoders[message.codec].decode(message.frame_index, message.payload)
            elif isinstance(message, SourceImageChunk):
                image = assembler.add(message)
                if image is not None:
                    decode_source_image(image, message.format)
        elif target == 1:  # a bare payload into a stream's decoder (its state carries over)
            provider = atheris.FuzzedDataProvider(body)
            codec = CODEC_NAMES[provider.ConsumeIntInRange(0, len(CODEC_NAMES) - 1)]
            frame_index = provider.ConsumeIntInRange(0, 1 << 20)
            decoders[codec].decode(frame_index, provider.ConsumeBytes(len(body)))
        else:  # an image file as a source image
            decode_source_image(body, "jpeg" if len(body) % 2 else "png")
    except ProtocolError:
        pass


def main() -> None:
    argv = list(sys.argv)
    if not any(arg.startswith("-artifact_prefix=") for arg in argv):
        ARTIFACTS.mkdir(parents=True, exist_ok=True)  # crashing inputs go here, not in the tree
        argv.append(f"-artifact_prefix={ARTIFACTS}/")
    atheris.Setup(argv, fuzz_one)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
