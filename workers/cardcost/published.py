"""Sophgo's published speeds on one BM1684X (batch 1), the points the card cost model is fitted to, with the
published architectures of those models. Sources (and why two groups of figures are left out of a fit) are in
benchmarks/README.md, "A card cost model from published figures"."""

from __future__ import annotations

from dataclasses import dataclass

from .arch import Decoder, Encoder, whisper_encoder

# Bits per weight as Sophgo's scripts compiled them (tpu-mlir model_deploy): W4 per group of 64 weights with a 16-bit
# scale and an 8-bit zero point (asymmetric) = 4 + 24/64; W8 in those scripts per output channel (no --q_group_size).
INT4_BITS = 4 + 24 / 64
INT8_BITS = 8.0
F16_BITS = 16.0

# Published configs (Hugging Face config.json of each model; cited in benchmarks/README.md).
QWEN_7B = Decoder(layers=32, hidden=4096, heads=32, kv_heads=32, head_dim=128, intermediate=11008, vocab=151936)
QWEN1_5_7B = Decoder(32, 4096, 32, 32, 128, 11008, 151936)
QWEN2_7B = Decoder(28, 3584, 28, 4, 128, 18944, 152064)
CHATGLM3_6B = Decoder(28, 4096, 32, 2, 128, 13696, 65024)  # multi_query_group_num 2, kv_channels 128
GLM4_9B = Decoder(40, 4096, 32, 2, 128, 13696, 151552)
BAICHUAN2_7B = Decoder(32, 4096, 32, 32, 128, 11008, 125696)
MINICPM_2B = Decoder(40, 2304, 36, 36, 64, 5760, 122753)
DS_R1_QWEN_1_5B = Decoder(28, 1536, 12, 2, 128, 8960, 151936)
DS_R1_QWEN_7B = Decoder(28, 3584, 28, 4, 128, 18944, 152064)
DS_R1_QWEN_14B = Decoder(48, 5120, 40, 8, 128, 13824, 152064)


@dataclass(frozen=True)
class PublishedPoint:
    """One row of a Sophgo performance table: a model compiled at one quantization and SEQLEN, batch 1."""

    model: str
    decoder: Decoder
    quant: str  # as the table says: int4 | int8 | f16
    bits: float  # bits per layer weight as compiled (scales included)
    head_bits: float  # the lm_head's bits: F16 in some scripts, quantized like the layers in others
    seqlen: int  # static nets: the prefill runs over all SEQLEN positions, each decode step attends to all of them
    first_token_s: float
    tokens_per_s: float
    source: str  # the README (path in its repository) the figures come from
    sdk: str = ""  # SDK the table names
    prefill_fit: bool = True  # False: shown with its error, left out of the prefill fit (why: benchmarks/README.md)
    note: str = ""

    @property
    def label(self) -> str:
        return f"{self.model} {self.quant} seq{self.seqlen}"


SOPHON_DEMO = "sophgo/sophon-demo"
LLM_TPU = "sophgo/LLM-TPU"

POINTS: tuple[PublishedPoint, ...] = (
    PublishedPoint("Qwen-7B", QWEN_7B, "int4", INT4_BITS, INT4_BITS, 512, 0.739, 9.840,
                   f"{SOPHON_DEMO} sample/Qwen/README.md", "V24.04.01"),
    PublishedPoint("Qwen-7B", QWEN_7B, "int4", INT4_BITS, INT4_BITS, 2048, 3.328, 7.245,
                   f"{SOPHON_DEMO} sample/Qwen/README.md", "V24.04.01"),
    PublishedPoint("Qwen1.5-7B", QWEN1_5_7B, "int4", INT4_BITS, INT4_BITS, 512, 0.728, 9.504,
                   f"{SOPHON_DEMO} sample/Qwen/README.md", "V24.04.01"),
    PublishedPoint("Qwen1.5-7B", QWEN1_5_7B, "int4", INT4_BITS, INT4_BITS, 2048, 3.234, 7.083,
                   f"{SOPHON_DEMO} sample/Qwen/README.md", "V24.04.01"),
    PublishedPoint("Qwen2-7B", QWEN2_7B, "int4", INT4_BITS, INT4_BITS, 512, 0.728, 9.504,
                   f"{SOPHON_DEMO} sample/Qwen/README.md", "V24.04.01",
                   note="the same figures as the Qwen1.5-7B seq512 row of that table"),
    PublishedPoint("ChatGLM3-6B", CHATGLM3_6B, "f16", F16_BITS, F16_BITS, 512, 1.408, 4.067,
                   f"{SOPHON_DEMO} sample/ChatGLM3/README.md", "V23.07.01", prefill_fit=False),
    PublishedPoint("ChatGLM3-6B", CHATGLM3_6B, "int8", INT8_BITS, F16_BITS, 512, 1.116, 8.184,
                   f"{SOPHON_DEMO} sample/ChatGLM3/README.md", "V23.07.01", prefill_fit=False),
    PublishedPoint("ChatGLM3-6B", CHATGLM3_6B, "int4", INT4_BITS, F16_BITS, 512, 1.121, 12.822,
                   f"{SOPHON_DEMO} sample/ChatGLM3/README.md", "V23.07.01", prefill_fit=False),
    PublishedPoint("GLM4-9B", GLM4_9B, "int8", INT8_BITS, INT8_BITS, 512, 1.181, 4.471,
                   f"{SOPHON_DEMO} sample/ChatGLM4/README.md", "V24.04.01"),
    PublishedPoint("GLM4-9B", GLM4_9B, "int4", INT4_BITS, INT4_BITS, 512, 1.114, 7.489,
                   f"{SOPHON_DEMO} sample/ChatGLM4/README.md", "V24.04.01"),
    PublishedPoint("Baichuan2-7B", BAICHUAN2_7B, "int8", INT8_BITS, F16_BITS, 512, 0.825, 5.510,
                   f"{SOPHON_DEMO} sample/Baichuan2/README.md", "V24.04.01"),
    PublishedPoint("Baichuan2-7B", BAICHUAN2_7B, "int4", INT4_BITS, F16_BITS, 512, 0.817, 7.603,
                   f"{SOPHON_DEMO} sample/Baichuan2/README.md", "V24.04.01"),
    PublishedPoint("MiniCPM-2B", MINICPM_2B, "int4", INT4_BITS, INT4_BITS, 512, 0.355, 26.0,
                   f"{SOPHON_DEMO} sample/MiniCPM/README.md", "V23.09LTS SP2"),
    PublishedPoint("DeepSeek-R1-Distill-Qwen-1.5B", DS_R1_QWEN_1_5B, "int4", INT4_BITS, F16_BITS, 8192, 5.431, 28.878,
                   f"{LLM_TPU} template/README.md (commit 0e83464)", "V24.04.01"),
    PublishedPoint("DeepSeek-R1-Distill-Qwen-7B", DS_R1_QWEN_7B, "int4", INT4_BITS, F16_BITS, 2048, 2.939, 10.600,
                   f"{LLM_TPU} template/README.md (commit 0e83464)", "V24.04.01"),
    PublishedPoint("DeepSeek-R1-Distill-Qwen-14B", DS_R1_QWEN_14B, "int4", INT4_BITS, F16_BITS, 512, 1.400, 5.564,
                   f"{LLM_TPU} template/README.md (commit 0e83464)", "V24.04.01"),
)


@dataclass(frozen=True)
class WhisperPoint:
    """sophon-demo sample/Whisper (SE7-32, F16): TPU time per second of audio. Not fitted: that time is mostly the
    decoder (beam search, 5 beams by default in its whisper.py), which its table does not separate from the encoder."""

    model: str
    encoder: Encoder
    ms_per_audio_s: float
    source: str = f"{SOPHON_DEMO} sample/Whisper/README.md (commit c7c94bb)"


WHISPER: tuple[WhisperPoint, ...] = (
    WhisperPoint("Whisper-base", whisper_encoder(512, 6, 2048, 80), 61.70),
    WhisperPoint("Whisper-small", whisper_encoder(768, 12, 3072, 80), 179.44),
    WhisperPoint("Whisper-medium", whisper_encoder(1024, 24, 4096, 80), 451.54),
)
