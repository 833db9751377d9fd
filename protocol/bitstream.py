"""Bit-level writing and reading for the ``delta`` keypoint codec, and the byte-level varints
of the binary Keypoints message (protocol/README.md, "Integer codes")."""

from __future__ import annotations

from .errors import InvalidField

MAX_UNARY_RUN = 4096  # a longer unary prefix is a broken payload, not a number
MAX_EXP_GOLOMB_BITS = 62  # longer exp-Golomb codes are broken payloads: no int64 holds them


def zigzag(value: int) -> int:
    """Signed -> unsigned: 0, -1, 1, -2, 2 ... -> 0, 1, 2, 3, 4 ..."""
    return 2 * value if value >= 0 else -2 * value - 1


def unzigzag(code: int) -> int:
    return code >> 1 if code % 2 == 0 else -((code + 1) >> 1)


class BitWriter:
    """Bits written most significant first; :meth:`to_bytes` pads the last byte with zeros."""

    def __init__(self) -> None:
        self._value = 0
        self._length = 0

    def __len__(self) -> int:
        return self._length

    def write(self, value: int, bits: int) -> None:
        """``value`` as ``bits`` plain bits (0 <= value < 2**bits)."""
        if bits:
            self._value = (self._value << bits) | value
            self._length += bits

    def write_rice(self, code: int, k: int) -> None:
        """Golomb-Rice code of ``code`` >= 0 with parameter ``k``: ``code >> k`` one bits, a
        zero bit, then the low ``k`` bits of ``code``."""
        run = code >> k
        self.write(((1 << run) - 1) << 1, run + 1)
        self.write(code & ((1 << k) - 1), k)

    def write_exp_golomb(self, code: int) -> None:
        """Order-0 exp-Golomb code of ``code`` >= 0: n zero bits, then ``code + 1`` in n + 1
        bits."""
        bits = (code + 1).bit_length()
        self.write(code + 1, 2 * bits - 1)

    def to_bytes(self) -> bytes:
        pad = -self._length % 8
        return (self._value << pad).to_bytes((self._length + pad) // 8, "big")


class BitReader:
    """Reads what :class:`BitWriter` wrote; InvalidField when the bits run out."""

    def __init__(self, data: bytes) -> None:
        self._value = int.from_bytes(data, "big")
        self._remaining = 8 * len(data)

    @property
    def remaining(self) -> int:
        return self._remaining

    def read(self, bits: int) -> int:
        if bits > self._remaining:
            raise InvalidField("payload ends in the middle of a code")
        self._remaining -= bits
        return (self._value >> self._remaining) & ((1 << bits) - 1)

    def _leading(self, bit: int) -> int:
        """How many ``bit`` bits come next (consumed), up to MAX_UNARY_RUN."""
        run = 0
        while self.read(1) == bit:
            run += 1
            if run > MAX_UNARY_RUN:
                raise InvalidField(f"a code with more than {MAX_UNARY_RUN} prefix bits")
        return run

    def read_rice(self, k: int) -> int:
        run = self._leading(1)
        return (run << k) | self.read(k)

    def read_exp_golomb(self) -> int:
        """A code below 2**MAX_EXP_GOLOMB_BITS (it fits an int64); InvalidField for a longer
        prefix."""
        zeros = self._leading(0)  # also consumed the leading one of ``code + 1``
        if zeros > MAX_EXP_GOLOMB_BITS:
            raise InvalidField(f"an exp-Golomb code of more than {MAX_EXP_GOLOMB_BITS} bits")
        return ((1 << zeros) | self.read(zeros)) - 1


def write_varint(value: int) -> bytes:
    """Unsigned LEB128: 7 bits a byte, least significant group first, high bit = more."""
    out = bytearray()
    while True:
        byte = value & 0x7F
        value >>= 7
        if value:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def read_varint(data: bytes, offset: int, name: str, max_bytes: int = 8) -> tuple[int, int]:
    """(value, offset after it) of the LEB128 varint at ``offset``; InvalidField naming
    ``name`` when it is cut short or longer than ``max_bytes``."""
    value = 0
    for i in range(max_bytes):
        if offset + i >= len(data):
            raise InvalidField(f"{name}: the message ends inside it")
        byte = data[offset + i]
        value |= (byte & 0x7F) << (7 * i)
        if not byte & 0x80:
            if i and not byte:
                raise InvalidField(f"{name}: not in its shortest form")
            return value, offset + i + 1
    raise InvalidField(f"{name}: longer than {max_bytes} bytes")
