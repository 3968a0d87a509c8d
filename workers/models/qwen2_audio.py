"""Qwen2-Audio-7B-Instruct (config.json `model_type` "qwen2_audio").

- Features: Whisper log-mel, 128 bins, padded to the extractor's window (`chunk_length`, 30 s = 3000 frames when
  preprocessor_config.json does not say) — `padding="max_length"`.
- Audio tokens: the encoder's conv (stride 2) then avg-pool (stride 2): 25 per second, 750 per window. The encoder
  attends over the conv's output positions, the valid ones marked by a key mask (audio_chunks: one chunk).
- Prompt: Qwen2AudioProcessor's chat template — system turn (config/prompts.toml `system`), user turn
  "Audio 1: <|audio_bos|><|AUDIO|><|audio_eos|>\\n" + the instruction, generation prompt.
- Ids: `<|AUDIO|>` from config.json `audio_token_index` (else tokenizer_config.json's `audio_token`), the audio
  bos/eos tokens from processor_config.json / tokenizer_config.json, stop and pad ids from generation_config.json
  and the tokenizer (workers/prompts.py).
- Answer: free text in several shapes (bare words, JSON, a lead-in sentence): workers/cleanup.extract_transcript.
"""

from __future__ import annotations

from pathlib import Path

from transcribe_batch.manifests.row import ManifestRow

from ..cleanup import extract_transcript
from ..prompts import PromptError, Templates, read_json, token_id
from .base import Answer, AudioChunk, ModelFamily, NetFacts, PromptSpec, ReferenceModel


def conv_frames(n_valid_frames: int) -> int:
    """Encoder positions after conv2 (kernel 3, stride 2, padding 1): the key positions the encoder attends over."""
    return (n_valid_frames - 1) // 2 + 1


def audio_token_count(n_valid_frames: int) -> int:
    """Audio tokens after the encoder's conv (stride 2) and avg-pool (stride 2), as Qwen2AudioProcessor counts them."""
    return max(0, (conv_frames(n_valid_frames) - 2) // 2 + 1)


class Qwen2Audio(ModelFamily):
    model_type = "qwen2_audio"
    name = "Qwen2-Audio"
    fixed_window = True
    default_window_s = 30  # WhisperFeatureExtractor's chunk_length in the released preprocessor_config.json
    max_request_s = 30.0

    def __init__(self, model_dir: Path | None, templates: Templates):
        super().__init__(model_dir, templates)
        self.system = templates.system
        if self.tokenizer is None:
            return
        d = model_dir
        config = read_json(d / "config.json")
        tok_config = read_json(d / "tokenizer_config.json")
        proc_config = read_json(d / "processor_config.json")

        def token(name: str, default: str) -> str:
            return proc_config.get(name) or tok_config.get(name) or default

        if "audio_token_index" in config:
            self._audio_token_id = int(config["audio_token_index"])
            if self.tokenizer.id_to_token(self._audio_token_id) is None:
                raise PromptError(f"{d}: audio_token_index {self._audio_token_id} is not in the tokenizer")
        else:
            self._audio_token_id = token_id(self.tokenizer, token("audio_token", "<|AUDIO|>"), d)
        self.audio_bos = token("audio_bos_token", "<|audio_bos|>")
        self.audio_eos = token("audio_eos_token", "<|audio_eos|>")
        for t in (self.audio_bos, self.audio_eos, "<|im_start|>", "<|im_end|>"):
            token_id(self.tokenizer, t, d)

    @property
    def audio_token_id(self) -> int:
        self._need_tokenizer()
        return self._audio_token_id

    @property
    def token_step_samples(self) -> int:
        return 2 * 2 * self.features.hop_length  # conv stride 2, pool stride 2

    def audio_tokens(self, n_valid_frames: int) -> int:
        return audio_token_count(n_valid_frames)

    def audio_chunks(self, n_valid_frames: int) -> tuple[AudioChunk, ...]:
        """One chunk: the window's valid frames; the key mask marks the conv positions they reach (HF's
        `audio_feat_lengths`); the first audio_tokens rows of the pooled output are the clip's."""
        return (AudioChunk(frames=n_valid_frames, keep=(), keys=conv_frames(n_valid_frames),
                           rows=audio_token_count(n_valid_frames)),)

    def check_template(self, template: str) -> None:
        if template not in self.templates.templates:
            raise PromptError(f"unknown template {template!r}; known: {', '.join(sorted(self.templates.templates))}")

    def prompt_spec(self, row: ManifestRow | None, template: str) -> PromptSpec:
        return PromptSpec(self.templates.instruction(row, template))

    def prompt_text(self, spec: PromptSpec) -> str:
        return (
            f"<|im_start|>system\n{self.system}<|im_end|>\n"
            f"<|im_start|>user\nAudio 1: {self.audio_bos}{self.audio_token}{self.audio_eos}\n{spec.text}<|im_end|>\n"
            "<|im_start|>assistant\n"
        )

    def net_facts(self) -> NetFacts:
        config = read_json(self.model_dir / "config.json") if self.model_dir is not None else {}
        text = config.get("text_config") or {}
        audio_id = config.get("audio_token_index", config.get("audio_token_id"))
        return NetFacts(hidden_size=text.get("hidden_size", config.get("hidden_size")),
                        vocab_size=text.get("vocab_size", config.get("vocab_size")),
                        num_hidden_layers=text.get("num_hidden_layers"), audio_token_id=audio_id,
                        n_mels=self.features.feature_size, frames_per_launch=self.features.n_frames)

    def parse(self, raw: str) -> Answer:
        return Answer(extract_transcript(raw))

    def load_reference(self, dtype) -> ReferenceModel:
        from transformers import Qwen2AudioForConditionalGeneration

        model = Qwen2AudioForConditionalGeneration.from_pretrained(self.model_dir, dtype=dtype, local_files_only=True)
        inner = model.model if hasattr(model, "model") else model
        return ReferenceModel(generator=model, audio_encoder=inner.audio_tower,
                              max_seq_len=model.config.text_config.max_position_embeddings)
