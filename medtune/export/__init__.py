"""Export a run's merged model to safetensors and/or GGUF, each checked against the merged model.

    python -m medtune.export runs/<run> --format gguf --quant q8_0      # see medtune/export/cli.py

Layers: source (which adapter, which base) -> merge (float32 merged model) -> writers (safetensors, gguf_writer +
gguf_tokenizer) -> gguf_loader / check (load back, compare) -> card (README.md, Modelfile); exporter runs them.
"""
