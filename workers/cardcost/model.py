"""The card cost model: seconds a BM1684X chip spends on one request's audio encode and prefill, and on one decode step
of B rows, for a model architecture at a quantization and a net shape, with the constants fitted to Sophgo's
published figures (fit.py). A PROJECTION from those figures, not a measurement of our runtime."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from .arch import Architecture
from .fit import CardConstants, calibration

# Bits per layer weight as tpu-mlir 1.30.2's llm_convert (native/compile/convert.py) compiles them: per group of 64
# weights (-g 64) a 16-bit scale and an 8-bit zero point. The lm_head stays bf16 in our converter.
QUANT_BITS = {"bf16": 16.0, "f16": 16.0, "w8bf16": 8 + 24 / 64, "w8f16": 8 + 24 / 64,
              "w4bf16": 4 + 24 / 64, "w4f16": 4 + 24 / 64}
USABLE_DEVICE_BYTES = 14678 * 2 ** 20  # per chip, as bm-smi reports it ("DevMem …/14678 MB"; notes/bm1684x.md)


def _fitted() -> CardConstants:
    return calibration().constants


@dataclass(frozen=True)
class CardModel:
    """One chip running one compiled model. Times in seconds on the card (not divided by any simulator speed-up)."""

    arch: Architecture
    quant: str = "w4bf16"  # a key of QUANT_BITS
    seqlen: int = 1024  # static nets: every decode step attends to all SEQLEN slots; 0 = dynamic (only those used)
    prefill_len: int = 0  # positions a static prefill net runs over; 0 = seqlen (convert.py's default) or, dynamic,
    #                       the prompt's own length
    head_bits: float = 16.0  # the lm_head's precision (bf16 in convert.py)
    constants: CardConstants = field(default_factory=_fitted)

    def __post_init__(self):
        if self.quant not in QUANT_BITS:
            raise ValueError(f"quantization {self.quant!r} unknown; known: {', '.join(QUANT_BITS)}")
        if self.seqlen < 0 or self.prefill_len < 0:
            raise ValueError(f"seqlen and prefill_len must be >= 0 (got {self.seqlen}, {self.prefill_len})")
        if self.seqlen and self.prefill_len > self.seqlen:
            raise ValueError(f"prefill_len {self.prefill_len} exceeds seqlen {self.seqlen}")

    @property
    def static(self) -> bool:
        return self.seqlen > 0

    @property
    def weight_bytes(self) -> float:
        """What every decode step (and every prefill) reads: the layers at the quantization's bits, the lm_head."""
        d = self.arch.decoder
        return d.params * QUANT_BITS[self.quant] / 8 + d.head_params * self.head_bits / 8

    def kv_len(self, prompt_len: int, generated: int) -> int:
        """History slots a decode step attends to: all SEQLEN of a static net, else the prompt and what followed."""
        return self.seqlen if self.static else prompt_len + generated

    def decode_step_s(self, kv_lens: Sequence[int]) -> float:
        """One decode step for len(kv_lens) rows: the weights once for all rows, each row's K/V history; compute
        (2 FLOPs per weight per row, attention over its history) overlaps the streaming, so the larger one counts."""
        if not kv_lens:
            return 0.0
        c, d = self.constants, self.arch.decoder
        memory = self.weight_bytes * c.s_per_weight_byte + sum(d.kv_bytes(n) for n in kv_lens) * c.s_per_kv_byte
        compute = 0.0
        for n in kv_lens:
            mm, att = d.step_flops(n)
            compute += mm * c.s_per_matmul_flop + att * c.s_per_attention_flop
        return c.step_overhead_s + max(memory, compute)

    def decode_step_rows_s(self, rows: float, kv_len: int) -> float:
        """A decode step with `rows` busy slots on average (a fraction: a mean occupancy), each attending to kv_len
        slots. Equal to decode_step_s([kv_len] * rows) for whole rows (both sides are linear in the rows)."""
        c, d = self.constants, self.arch.decoder
        memory = self.weight_bytes * c.s_per_weight_byte + rows * d.kv_bytes(kv_len) * c.s_per_kv_byte
        mm, att = d.step_flops(kv_len)
        compute = rows * (mm * c.s_per_matmul_flop + att * c.s_per_attention_flop)
        return c.step_overhead_s + max(memory, compute)

    def prefill_s(self, prompt_len: int) -> float:
        """One request's prefill (not batched): static nets run over prefill_len (or SEQLEN) positions whatever the
        prompt; it reads the weights once."""
        c = self.constants
        tokens = (self.prefill_len or self.seqlen) if self.static else max(1, prompt_len)
        mm, att = self.arch.decoder.prefill_flops(tokens)
        return self.weight_bytes * c.s_per_weight_byte + mm * c.s_per_matmul_flop + att * c.s_per_attention_flop \
            + c.call_overhead_s

    def encode_s(self, audio_s: float) -> float:
        """The audio encoder over `audio_s` seconds (whole static windows, bf16 weights read once per launch)."""
        enc = self.arch.encoder
        if enc is None:
            return 0.0
        c = self.constants
        mm, att = enc.flops(audio_s)
        return enc.windows(audio_s) * enc.params * 2 * c.s_per_weight_byte + mm * c.s_per_matmul_flop \
            + att * c.s_per_attention_flop

    def first_token_s(self, audio_s: float, prompt_len: int) -> float:
        return self.encode_s(audio_s) + self.prefill_s(prompt_len)

    def device_bytes(self, batch: int) -> float:
        """Device memory: weights, the embedding (unless tied to the lm_head), the audio net (bf16), B rows of K/V."""
        d = self.arch.decoder
        embedding = 0 if self.arch.tied else d.head_params * 2
        audio = self.arch.encoder.params * 2 if self.arch.encoder else 0
        return self.weight_bytes + embedding + audio + batch * d.kv_bytes(self.seqlen or 0)

    def fits(self, batch: int) -> bool:
        return self.device_bytes(batch) <= USABLE_DEVICE_BYTES
