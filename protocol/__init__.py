"""What sender and receiver share: the keypoint set (:mod:`.keypoint_set`) and the observe/predict
schedule (:mod:`.schedule`), and the wire protocol between them: versioned messages (msgpack, and a
compact binary layout for keypoints), keypoint codecs and source image transfer.
protocol/README.md is the byte-level spec."""

from .errors import (
    InvalidField,
    MalformedMessage,
    MessageTooLarge,
    ProtocolError,
    UnsupportedVersion,
)
from .keypoint_codec import KEYPOINT_CODECS, MAX_KEYPOINTS, KeypointCodec
from .keypoint_stream import (
    CODEC_NAMES,
    DEFAULT_INTRA_INTERVAL,
    DecodedKeypoints,
    KeypointDecoder,
    KeypointEncoder,
)
from .messages import (
    IMAGE_FORMATS,
    MAX_CHUNK_DATA_BYTES,
    MAX_MESSAGE_BYTES,
    PROTOCOL_VERSION,
    Bye,
    Feedback,
    Hello,
    IntraRequest,
    Keypoints,
    Message,
    SourceImageChunk,
    SourceRequest,
    decode_message,
    encode_message,
    validate_message,
)
from .rate_limited_log import RateLimitedLog
from .source_image import (
    MAX_SOURCE_PIXELS,
    SourceImageAssembler,
    decode_source_image,
    encode_source_image,
    split_source_image,
)

__all__ = [
    "CODEC_NAMES",
    "DEFAULT_INTRA_INTERVAL",
    "IMAGE_FORMATS",
    "KEYPOINT_CODECS",
    "MAX_CHUNK_DATA_BYTES",
    "MAX_KEYPOINTS",
    "MAX_MESSAGE_BYTES",
    "MAX_SOURCE_PIXELS",
    "PROTOCOL_VERSION",
    "Bye",
    "DecodedKeypoints",
    "Feedback",
    "Hello",
    "IntraRequest",
    "InvalidField",
    "KeypointCodec",
    "KeypointDecoder",
    "KeypointEncoder",
    "Keypoints",
    "MalformedMessage",
    "Message",
    "MessageTooLarge",
    "ProtocolError",
    "RateLimitedLog",
    "SourceImageAssembler",
    "SourceImageChunk",
    "SourceRequest",
    "UnsupportedVersion",
    "decode_message",
    "decode_source_image",
    "encode_message",
    "encode_source_image",
    "split_source_image",
    "validate_message",
]
