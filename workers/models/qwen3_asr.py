"""Qwen3-ASR-0.6B / 1.7B (config.json `model_type` "qwen3_asr"); the reference is PyPI `qwen-asr` 0.0.6.

- Features: Whisper log-mel (bins, hop, FFT from preprocessor_config.json; 128 bins), NOT padded to a window — the
  processor calls the extractor with `padding=True, truncation=False`: n_samples // 160 frames, all real.
- Audio tokens from the frame count n (qwen-asr `_get_feat_extract_output_lengths`): 13 per full 100 frames plus
  the conv (×8) count of the rest — 13 per second. The encoder works in chunks of 2·n_window frames (three 3×3
  stride-2 convolutions each; `audio_chunks` gives each chunk's lengths, which a compiled audio net's masks need).
- Longest request: 1200 s (`MAX_ASR_INPUT_SECONDS` of the reference package); pieces shorter than 0.5 s are
  zero-padded to 0.5 s, as the package does. Longer audio is split at pauses by the front end.
- Prompt (the checkpoint's chat template as the package renders it): system turn = optional context text, user turn
  = `<|audio_start|>` + audio pad + `<|audio_end|>`, generation prompt; with a forced language the assistant turn is
  pre-filled with `language X<asr_text>`. Context: the row's `prompt` field, else config/prompts.toml
  `[qwen3_asr] context`. Templates: `default` (the model identifies the language) and `language` (force the row's
  `language`, checked against config.json `support_languages` when the folder lists them).
- Ids: the audio pad / start / end tokens named by tokenizer_config.json (`audio_token`, `audio_bos_token`,
  `audio_eos_token`), their ids from the tokenizer, checked against config.json `thinker_config.audio_token_id` /
  `audio_start_token_id`; `<asr_text>` from the tokenizer; stop and pad ids as for every family (workers/prompts.py).
- Answer: `language English<asr_text>the words` → Answer("the words", "English") (qwen-asr `parse_asr_output`;
  `language None` = no speech; no tag = all text, language unknown — what a forced-language prompt gives).
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import sys
import types
from pathlib import Path

from transcribe_batch.manifests.row import ManifestRow

from ..prompts import LANGUAGES, PromptError, Templates, read_json, token_id
from .base import Answer, AudioChunk, ModelFamily, NetFacts, PromptSpec, ReferenceModel

ASR_TEXT = "<asr_text>"
LANGUAGE_PREFIX = "language "
FRAMES_PER_BLOCK = 100  # the processor's encoder-window bookkeeping: 13 tokens per full 100 frames
TOKENS_PER_BLOCK = 13
AUTO, FORCED = "default", "language"  # the two templates this family understands


def conv_out(n: int) -> int:
    """Frames after one of the encoder's 3x3 stride-2 padding-1 convolutions."""
    return (n - 1) // 2 + 1


def audio_token_count(n_frames: int) -> int:
    """Audio tokens for n valid feature frames (qwen-asr processing_qwen3_asr._get_feat_extract_output_lengths)."""
    leave = n_frames % FRAMES_PER_BLOCK
    feat = (leave - 1) // 2 + 1
    return ((feat - 1) // 2 + 1 - 1) // 2 + 1 + (n_frames // FRAMES_PER_BLOCK) * TOKENS_PER_BLOCK


def language_name(value: str) -> str:
    """A manifest language (ISO code or name) as Qwen3-ASR spells it: "en" → "English", "cHINese" → "Chinese"."""
    s = str(value).strip()
    s = LANGUAGES.get(s.lower(), s)
    return s[:1].upper() + s[1:].lower()


class Qwen3Asr(ModelFamily):
    model_type = "qwen3_asr"
    name = "Qwen3-ASR"
    fixed_window = False
    max_request_s = 1200.0
    min_request_s = 0.5

    def __init__(self, model_dir: Path | None, templates: Templates):
        super().__init__(model_dir, templates)
        self.context = str((templates.sections.get(self.model_type) or {}).get("context", ""))
        config = read_json(model_dir / "config.json") if model_dir is not None else {}
        if model_dir is not None and "thinker_config" not in config:
            raise PromptError(
                f"{model_dir / 'config.json'}: no `thinker_config` field. This runner takes the released Qwen3-ASR "
                "checkpoints (Qwen/Qwen3-ASR-0.6B / -1.7B, qwen-asr's layout: thinker_config.audio_config / "
                "text_config); a folder converted to transformers' own Qwen3-ASR layout (top-level audio_config / "
                "text_config) is not supported")
        thinker = config.get("thinker_config") or {}
        self.thinker = thinker
        self.chunk_frames = 2 * int((thinker.get("audio_config") or {}).get("n_window", FRAMES_PER_BLOCK // 2))
        self.support_languages = tuple(config.get("support_languages") or ())
        mel_bins = (thinker.get("audio_config") or {}).get("num_mel_bins")
        if mel_bins is not None and int(mel_bins) != self.features.feature_size:
            raise PromptError(f"{model_dir}: config.json thinker_config.audio_config.num_mel_bins is {mel_bins}, "
                              f"preprocessor_config.json feature_size is {self.features.feature_size}")
        if self.tokenizer is None:
            return
        d = model_dir
        tok_config = read_json(d / "tokenizer_config.json")
        extra = tok_config.get("extra_special_tokens") if isinstance(tok_config.get("extra_special_tokens"), dict) else {}

        def named(key: str, default: str) -> str:
            return tok_config.get(key) or extra.get(key) or default

        self.audio_pad = named("audio_token", "<|audio_pad|>")
        self.audio_start = named("audio_bos_token", "<|audio_start|>")
        self.audio_end = named("audio_eos_token", "<|audio_end|>")
        self._audio_token_id = token_id(self.tokenizer, self.audio_pad, d)
        self.audio_start_id = token_id(self.tokenizer, self.audio_start, d)
        self.audio_end_id = token_id(self.tokenizer, self.audio_end, d)
        self.asr_text_id = token_id(self.tokenizer, ASR_TEXT, d)
        for t in ("<|im_start|>", "<|im_end|>"):
            token_id(self.tokenizer, t, d)
        for field, got in (("audio_token_id", self._audio_token_id), ("audio_start_token_id", self.audio_start_id)):
            want = thinker.get(field)
            if want is not None and int(want) != got:
                raise PromptError(f"{d}: config.json thinker_config.{field} is {want}, but the tokenizer gives "
                                  f"{self.tokenizer.id_to_token(got)!r} id {got}")

    # -- audio ---------------------------------------------------------------------------------------------------
    @property
    def token_step_samples(self) -> int:
        return 8 * self.features.hop_length  # three stride-2 convolutions

    def audio_tokens(self, n_valid_frames: int) -> int:
        return audio_token_count(n_valid_frames)

    def audio_chunks(self, n_valid_frames: int) -> tuple[AudioChunk, ...]:
        """Chunks of chunk_frames frames (the last partial), each giving the rows of its three convolutions. The
        reference pads a clip's chunks to its longest chunk, so the convolutions of a partial last chunk see zero
        frames after it (keep: every conv output) - except in a clip of ONE chunk, whose convolutions end with it
        (keep: the conv outputs of its own frames)."""
        c = self.chunk_frames
        widths = [min(c, n_valid_frames - start) for start in range(0, n_valid_frames, c)]
        full = (conv_out(c), conv_out(conv_out(c)))
        out = []
        for w in widths:
            c1, c2 = conv_out(w), conv_out(conv_out(w))
            rows = conv_out(c2)
            out.append(AudioChunk(frames=w, keep=(c1, c2) if len(widths) == 1 else full, keys=rows, rows=rows))
        return tuple(out)

    # -- prompt --------------------------------------------------------------------------------------------------
    @property
    def audio_token_id(self) -> int:
        self._need_tokenizer()
        return self._audio_token_id

    def check_template(self, template: str) -> None:
        if template not in (AUTO, FORCED):
            raise PromptError(f"template {template!r} is an instruction for instruction-following models; "
                              f"{self.name} takes none: use {AUTO!r} (it identifies the language) or {FORCED!r} (force "
                              "the row's `language`); the row's `prompt` field is passed as context")

    def prompt_spec(self, row: ManifestRow | None, template: str) -> PromptSpec:
        task, prompt, language_code = (None, None, None) if row is None else (row.task, row.prompt, row.language)
        name = task or template
        where = f"row {row.id if row is not None else '?'!r}"
        if name not in (AUTO, FORCED):
            raise PromptError(f"task {name!r} of {where} means nothing to {self.name}: use {AUTO!r} or {FORCED!r}")
        context = str(prompt) if prompt else self.context
        if name == AUTO:
            return PromptSpec(context)
        if not language_code:
            raise PromptError(f"template {FORCED!r} needs the row's `language` field ({where})")
        language = language_name(language_code)
        if self.support_languages and language not in self.support_languages:
            raise PromptError(f"{where}: language {language_code!r} ({language}) is not one the model supports "
                              f"(config.json support_languages: {', '.join(self.support_languages)})")
        return PromptSpec(context, language)

    def prompt_text(self, spec: PromptSpec) -> str:
        text = (
            f"<|im_start|>system\n{spec.text}<|im_end|>\n"
            f"<|im_start|>user\n{self.audio_start}{self.audio_pad}{self.audio_end}<|im_end|>\n"
            "<|im_start|>assistant\n"
        )
        return text + (f"{LANGUAGE_PREFIX}{spec.language}{ASR_TEXT}" if spec.language else "")

    def decode(self, token_ids: list[int]) -> str:
        """Special tokens dropped, but `<asr_text>` kept as the separator whatever its `special` flag says."""
        self._need_tokenizer()
        ids = list(token_ids)
        if self.asr_text_id not in ids:
            return super().decode(ids)
        k = ids.index(self.asr_text_id)
        return super().decode(ids[:k]) + ASR_TEXT + super().decode(ids[k + 1:])

    # -- answer --------------------------------------------------------------------------------------------------
    def parse(self, raw: str) -> Answer:
        s = (raw or "").strip()
        if ASR_TEXT not in s:
            return Answer(" ".join(s.split()))
        meta, text = s.split(ASR_TEXT, 1)
        text = " ".join(text.split())
        if "language none" in meta.lower():
            return Answer(text)
        for line in meta.splitlines():
            line = line.strip()
            if line.lower().startswith(LANGUAGE_PREFIX):
                value = line[len(LANGUAGE_PREFIX):].strip()
                return Answer(text, language_name(value) if value else None)
        return Answer(text)

    # -- compiled model ------------------------------------------------------------------------------------------
    def net_facts(self) -> NetFacts:
        """The audio encoder works in chunks of 2·n_window frames and attends within windows of n_window_infer
        frames: one audio-net launch of a compiled model is one such window."""
        text = self.thinker.get("text_config") or {}
        audio = self.thinker.get("audio_config") or {}
        chunk = self.chunk_frames
        return NetFacts(hidden_size=text.get("hidden_size"), vocab_size=text.get("vocab_size"),
                        num_hidden_layers=text.get("num_hidden_layers"),
                        audio_token_id=self.thinker.get("audio_token_id"), n_mels=self.features.feature_size,
                        frames_per_launch=int(audio.get("n_window_infer", chunk)), chunk_frames=chunk)

    # -- reference engine ----------------------------------------------------------------------------------------
    def load_reference(self, dtype) -> ReferenceModel:
        backend = import_qwen_asr_backend()
        model = backend.Qwen3ASRForConditionalGeneration.from_pretrained(self.model_dir, dtype=dtype,
                                                                         local_files_only=True)
        thinker = model.thinker
        return ReferenceModel(generator=thinker, audio_encoder=thinker.audio_tower,
                              max_seq_len=thinker.config.text_config.max_position_embeddings)


QWEN_ASR_MISSING = (
    "the hf engine runs Qwen3-ASR with the model classes of PyPI `qwen-asr` 0.0.6, which is not installed. It pins "
    "transformers 4.57.6 and pulls gradio/flask, so install it WITHOUT its dependencies next to this project's "
    "transformers:\n  pip install --no-deps 'qwen-asr==0.0.6'"
)


def import_qwen_asr_backend() -> types.ModuleType:
    """`qwen_asr.core.transformers_backend` (configuration, modeling, processing classes), working with this
    project's transformers 5 although qwen-asr 0.0.6 was written for 4.57:

    - `qwen_asr/__init__.py` is not run (bare package shells stand in): it imports the package's inference helpers
      and their dependencies (nagisa, soynlp, gradio, …), which the model classes do not need;
    - while the modeling module is imported, `check_model_inputs` accepts 4.57's decorator-factory call
      (`@check_model_inputs()`; transformers 5 takes the function directly) — restored right after;
    - the modeling module's own ROPE_INIT_FUNCTIONS gets 4.57's "default" RoPE (plain inverse frequencies; 5 dropped
      the entry and asks the rotary module's `compute_default_rope_parameters`, which is added); transformers'
      table is not touched;
    - `_tied_weights_keys` becomes 5's {target: source} mapping, so a checkpoint with tied embeddings loads tied;
    - generation: 5 passes `is_first_iteration` instead of `cache_position`, calls the KV cache `cache` (not
      `past_key_values`) in inputs and outputs, and `create_causal_mask` takes other arguments. The thinker's and its
      text model's `forward` are therefore restated here in 5's terms (the same steps: embed, splice the audio
      encoder's rows in at the audio pads, positions, causal mask, qwen-asr's decoder layers, norm, lm_head), and
      the step inputs are made here: the audio features on the first step only (as before), the position ids
      explicitly — the cumulative positions over the attention mask that qwen-asr's `get_rope_index` gives for
      audio + text (all three MRoPE rows equal). Every module (encoder, attention, MLP, rotary) is qwen-asr's;
    - the audio encoder's sinusoidal position table (a non-persistent buffer, not in the checkpoint) is filled in
      `_init_weights`: 5 builds models on the meta device and leaves such buffers empty otherwise;
    - the audio encoder attends within its windows (13 · n_window_infer / (2 · n_window) rows, `cu_seqlens`) with
      every attention implementation. qwen-asr passes the windows only to flash-attention 2; with sdpa/eager (the
      CPU, most GPUs) its encoder attends across the whole clip, unlike its vLLM backend (which the published
      figures used) — here a block-diagonal mask gives sdpa/eager the same windows. Clips up to one window are
      unaffected;
    - `Qwen3ASRConfig.get_text_config` answers before `thinker_config` is set (5 validates inside `__init__`), and
      the configs' pad/bos/eos token ids default to None as 4.57's base config did.
    tests/test_qwen3_asr_reference.py holds the result to qwen-asr's own processor and generate."""
    name = "qwen_asr.core.transformers_backend"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.find_spec("qwen_asr")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError(QWEN_ASR_MISSING)
    root = Path(list(spec.submodule_search_locations)[0])
    for pkg, path in (("qwen_asr", root), ("qwen_asr.core", root / "core")):
        if pkg not in sys.modules:  # bare package shells: their __init__ files are not run
            module = types.ModuleType(pkg)
            module.__path__ = [str(path)]
            module.__package__ = pkg
            sys.modules[pkg] = module
    import transformers.utils.generic as generic
    from transformers.generation import GenerationMixin

    original = generic.check_model_inputs

    def check_model_inputs(func=None, **kwargs):
        return original(func) if callable(func) else original

    generic.check_model_inputs = check_model_inputs
    try:
        backend = importlib.import_module(name)
    finally:
        generic.check_model_inputs = original
    configuration = sys.modules[f"{name}.configuration_qwen3_asr"]
    configuration.Qwen3ASRConfig.get_text_config = _get_text_config
    for cls in (configuration.Qwen3ASRTextConfig, configuration.Qwen3ASRThinkerConfig, configuration.Qwen3ASRConfig):
        for attr in ("pad_token_id", "bos_token_id", "eos_token_id"):
            if not hasattr(cls, attr):  # 4.57's PretrainedConfig defaulted them to None; 5's has none
                setattr(cls, attr, None)
    modeling = sys.modules[f"{name}.modeling_qwen3_asr"]
    if "default" not in modeling.ROPE_INIT_FUNCTIONS:
        modeling.ROPE_INIT_FUNCTIONS = {**modeling.ROPE_INIT_FUNCTIONS, "default": _default_rope}
    modeling.Qwen3ASRThinkerTextRotaryEmbedding.compute_default_rope_parameters = staticmethod(_default_rope)
    modeling.Qwen3ASRAudioAttention.forward = _windowed_attention(modeling.Qwen3ASRAudioAttention.forward)
    pretrained = modeling.Qwen3ASRPreTrainedModel
    if "_init_weights" not in pretrained.__dict__:
        pretrained._init_weights = _init_weights_with_sinusoids(pretrained._init_weights, modeling.SinusoidsPositionEmbedding)
    thinker = modeling.Qwen3ASRThinkerForConditionalGeneration
    if "is_first_iteration" in inspect.signature(GenerationMixin.prepare_inputs_for_generation).parameters:
        thinker.prepare_inputs_for_generation = _prepare_inputs_for_generation
        thinker.forward = _thinker_forward
        modeling.Qwen3ASRThinkerTextModel.forward = _text_model_forward
    if isinstance(thinker._tied_weights_keys, list):
        thinker._tied_weights_keys = {"lm_head.weight": "model.embed_tokens.weight"}
    return backend


def _prepare_inputs_for_generation(self, input_ids, *args, is_first_iteration=False, **kwargs):
    from transformers.generation import GenerationMixin

    model_inputs = GenerationMixin.prepare_inputs_for_generation(self, input_ids, *args,
                                                                 is_first_iteration=is_first_iteration, **kwargs)
    mask = kwargs.get("attention_mask")
    if mask is not None:
        positions = mask.long().cumsum(-1) - 1
        positions = positions.masked_fill(mask == 0, 1)[:, -model_inputs["input_ids"].shape[1]:]
        model_inputs["position_ids"] = positions.unsqueeze(0).expand(3, -1, -1)
    else:
        model_inputs["position_ids"] = None
    if not is_first_iteration:
        model_inputs["input_features"] = None
    return model_inputs


def _thinker_forward(self, input_ids=None, input_features=None, attention_mask=None, feature_attention_mask=None,
                     audio_feature_lengths=None, position_ids=None, cache=None, past_key_values=None,
                     inputs_embeds=None, use_cache=None, **kwargs):
    from transformers.modeling_outputs import CausalLMOutputWithPast

    cache = cache if cache is not None else past_key_values
    if inputs_embeds is None:
        inputs_embeds = self.get_input_embeddings()(input_ids)
    if input_features is not None:
        audio = self.get_audio_features(input_features, feature_attention_mask=feature_attention_mask,
                                        audio_feature_lengths=audio_feature_lengths)
        audio = audio.to(inputs_embeds.device, inputs_embeds.dtype)
        audio_mask = self.get_placeholder_mask(input_ids, inputs_embeds=inputs_embeds)
        inputs_embeds = inputs_embeds.masked_scatter(audio_mask, audio)
    if position_ids is None and attention_mask is not None:
        position_ids, _ = self.get_rope_index(attention_mask)
        position_ids = position_ids[..., -inputs_embeds.shape[1]:]
    outputs = self.model(attention_mask=attention_mask, position_ids=position_ids, cache=cache,
                         inputs_embeds=inputs_embeds, use_cache=use_cache, **kwargs)
    return CausalLMOutputWithPast(logits=self.lm_head(outputs.last_hidden_state), cache=outputs.cache)


def _text_model_forward(self, input_ids=None, attention_mask=None, position_ids=None, cache=None,
                        past_key_values=None, inputs_embeds=None, use_cache=None, **kwargs):
    import torch
    from transformers.cache_utils import DynamicCache
    from transformers.masking_utils import create_causal_mask
    from transformers.modeling_outputs import BaseModelOutputWithPast

    cache = cache if cache is not None else past_key_values
    if inputs_embeds is None:
        inputs_embeds = self.embed_tokens(input_ids)
    if use_cache and cache is None:
        cache = DynamicCache(config=self.config)
    if position_ids is None:
        past = cache.get_seq_length() if cache is not None else 0
        position_ids = torch.arange(past, past + inputs_embeds.shape[1], device=inputs_embeds.device)
        position_ids = position_ids.view(1, 1, -1).expand(3, inputs_embeds.shape[0], -1)
    elif position_ids.ndim == 2:
        position_ids = position_ids[None, ...].expand(3, position_ids.shape[0], -1)
    text_positions = position_ids[0]
    mask = create_causal_mask(config=self.config, inputs_embeds=inputs_embeds, attention_mask=attention_mask,
                              cache=cache, position_ids=text_positions)
    hidden = inputs_embeds
    rope = self.rotary_emb(hidden, position_ids)
    for layer in self.layers:
        hidden = layer(hidden, attention_mask=mask, position_ids=text_positions, past_key_values=cache,
                       use_cache=use_cache, position_embeddings=rope, **kwargs)
    return BaseModelOutputWithPast(last_hidden_state=self.norm(hidden), cache=cache if use_cache else None)


def _windowed_attention(forward):
    def windowed(self, hidden_states, cu_seqlens=None, attention_mask=None, **kwargs):
        if (attention_mask is None and cu_seqlens is not None and len(cu_seqlens) > 2
                and self.config._attn_implementation != "flash_attention_2"):
            import torch

            n = hidden_states.shape[0]
            attention_mask = torch.full((1, 1, n, n), torch.finfo(hidden_states.dtype).min,
                                        dtype=hidden_states.dtype, device=hidden_states.device)
            bounds = cu_seqlens.tolist()
            for start, end in zip(bounds[:-1], bounds[1:]):
                attention_mask[..., start:end, start:end] = 0
        return forward(self, hidden_states, cu_seqlens=cu_seqlens, attention_mask=attention_mask, **kwargs)

    return windowed


def _init_weights_with_sinusoids(base, sinusoids_class):
    def _init_weights(self, module):
        base(self, module)
        if isinstance(module, sinusoids_class):
            import numpy as np
            import torch

            length, channels = module.positional_embedding.shape  # SinusoidsPositionEmbedding's own formula
            increment = np.log(10000) / (channels // 2 - 1)
            inv = torch.exp(-increment * torch.arange(channels // 2, device="cpu").float())
            scaled = torch.arange(length, device="cpu")[:, None] * inv[None, :]
            with torch.no_grad():
                module.positional_embedding.copy_(torch.cat([torch.sin(scaled), torch.cos(scaled)], dim=1))

    return _init_weights


def _get_text_config(self, decoder=False, **kwargs):
    thinker = self.__dict__.get("thinker_config")
    return self if thinker is None else thinker.get_text_config()


def _default_rope(config, device=None, seq_len=None):
    """transformers 4.57's `_compute_default_rope_parameters`: inverse frequencies over the head dim, scaling 1."""
    import torch

    dim = int(getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads)
    base = float(config.rope_theta)
    inv_freq = 1.0 / (base ** (torch.arange(0, dim, 2, dtype=torch.int64).to(device=device, dtype=torch.float) / dim))
    return inv_freq, 1.0
