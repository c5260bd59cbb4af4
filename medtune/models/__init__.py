"""Models: build the base (hub, local dir, GGUF, random), quantise it, add LoRA, isolate packed documents.

    model, tokenizer = build_model(cfg.model, cfg.quantization, device)    # medtune.models.build
    python -m medtune.models convert                       # the Gemma 3 270M GGUF -> a transformers folder, once

Modules: build, quantize, lora, document_masks (per-document attention), anatomy (decoder layers, head, unwrapping),
precision (dtype names), arch_spec and archs/ (architectures readable without torch), gguf, byte_tokenizer,
regional_compile (compiled decoder layers and their eager forwards for scoring).
"""
