"""The memory estimator's weight, adapter and optimizer arithmetic against real tiny models built on the CPU."""

from __future__ import annotations

import json
import re

import pytest
import torch
from conftest import tiny_model

from medtune.config import compose
from medtune.memory.cli import main
from medtune.memory.estimate import (
    Calibration,
    estimate,
    layer_activation_bytes,
    load_arch,
    lora_param_count,
    quant_state_bytes,
    quantized_bytes,
    weight_bytes,
)
from medtune.models.lora import apply_lora


def _storage_bytes(model: torch.nn.Module) -> int:
    """Bytes of every distinct parameter/buffer storage, bitsandbytes quantisation state included."""
    seen: dict[int, int] = {}

    def add(t: torch.Tensor | None) -> None:
        if t is not None:
            seen[t.data_ptr()] = t.numel() * t.element_size()

    for tensor in [*model.parameters(), *model.buffers()]:
        add(tensor)
        state = getattr(tensor, "quant_state", None)
        if state is not None:
            for part in (state.absmax, state.code, state.offset):
                add(part)
            if state.state2 is not None:
                add(state.state2.absmax)
                add(state.state2.code)
        add(getattr(tensor, "SCB", None))
    return sum(seen.values())


@pytest.mark.parametrize("arch", ["tiny_gemma3", "tiny_llama"])
def test_fp32_weights_equal_the_conftest_model(arch: str) -> None:
    cfg = compose([f"model={arch}", "quantization=none"])
    assert sum(weight_bytes(load_arch(cfg), cfg).values()) == _storage_bytes(tiny_model(arch))


@pytest.mark.parametrize("method", ["none", "nf4", "int8"])
@pytest.mark.parametrize("arch", ["tiny_gemma3", "tiny_llama"])
def test_stored_weights_equal_built_model(arch: str, method: str) -> None:
    from medtune.models.build import build_model

    cfg = compose([f"model={arch}", f"quantization={method}", "model.dtype=bfloat16"])
    model, _ = build_model(cfg.model, cfg.quantization, torch.device("cpu"))
    assert sum(weight_bytes(load_arch(cfg), cfg).values()) == _storage_bytes(model)


def test_nf4_bytes_by_hand() -> None:
    # 2560 x 10240 weights: 13,107,200 B of codes, 409,600 blocks -> 409,600 B uint8 absmax + 1600 fp32 second-level
    # absmax (6400 B) + 1028 B map/offset + 64 B NF4 code; without double quant 4 B per block.
    n = 2560 * 10240
    assert quantized_bytes(n, "nf4", True) == 13_107_200 + 409_600 + 6_400 + 1_028 + 64
    assert quantized_bytes(n, "nf4", False) == 13_107_200 + 4 * 409_600 + 64


@pytest.mark.parametrize(
    "overrides", [[], ["lora.r=4", "lora.target_modules=[q_proj,down_proj]"], ["lora.use_dora=true"]]
)
def test_adapter_grads_and_adam_state_equal_measured(overrides: list[str]) -> None:
    cfg = compose(["model=tiny_gemma3", "quantization=none", *overrides])
    model = apply_lora(tiny_model("tiny_gemma3"), cfg.lora, cfg.quantization, grad_ckpt=0)
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert all(p.dtype == torch.float32 for p in trainable)
    est = estimate(cfg)
    assert est.parts["lora/params"] == sum(p.numel() * 4 for p in trainable)
    model.train()
    model(input_ids=torch.randint(3, 500, (2, 12))).logits.float().square().mean().backward()
    assert est.parts["lora/grads"] == sum(p.grad.numel() * p.grad.element_size() for p in trainable)
    optimizer = torch.optim.AdamW(trainable, lr=1e-3)
    optimizer.step()
    state = sum(t.numel() * t.element_size() for s in optimizer.state.values() for k, t in s.items() if k != "step")
    assert est.parts["optimizer/states"] == state


def test_lora_count_for_gemma3_4b() -> None:
    # per layer r * (in + out): q 16*(2560+2048), k and v 16*(2560+1024), o 16*(2048+2560), gate/up/down 16*12800
    cfg = compose(["model=medgemma_4b", "model.init=random"])
    per_layer = 16 * (4608 + 3584 + 3584 + 4608 + 3 * 12800)
    assert lora_param_count(load_arch(cfg), cfg) == 34 * per_layer


def test_fsdp_divides_weights_and_optimizer_but_not_activations() -> None:
    one = estimate(compose(["model=medgemma_4b", "model.init=random", "quantization=nf4"]))
    four = estimate(compose(["model=medgemma_4b", "model.init=random", "quantization=nf4", "sharding=fsdp"]), 4)
    for key in ("weights/layers", "weights/embed_head", "lora/params", "optimizer/states"):
        assert four.parts[key] == pytest.approx(one.parts[key] / 4)
    assert four.parts["activations/stored"] == one.parts["activations/stored"]
    assert four.parts["fsdp/gathered"] > 0
    assert four.peak_bytes < one.peak_bytes


def test_checkpointing_and_attention_terms() -> None:
    base = ["model=medgemma_4b", "model.init=random", "packing=pad_to_max", "trainer.micro_batch_size=1"]
    every = estimate(compose([*base, "trainer.grad_ckpt_every=1"])).parts
    half = estimate(compose([*base, "trainer.grad_ckpt_every=2"])).parts
    off = estimate(compose([*base, "trainer.grad_ckpt_every=0"])).parts
    assert every["activations/stored"] < half["activations/stored"] < off["activations/stored"]
    assert off["activations/recompute"] == 0
    # 34 layers, every layer checkpointed: only the bf16 inputs stay, 2 B x 2560 x 2048 tokens each
    assert every["activations/stored"] == 34 * 2 * 2560 * 2048
    cfg_sdpa = compose(base)
    cfg_eager = compose([*base, "model.attn_implementation=eager"])
    arch, cal = load_arch(cfg_sdpa), Calibration()
    extra = layer_activation_bytes(arch, cfg_eager, 2048, cal) - layer_activation_bytes(arch, cfg_sdpa, 2048, cal)
    assert extra == cal.eager_score_bytes * 8 * 2048 * 2048  # heads x seq^2 probabilities per layer


def test_offloaded_activations_leave_only_the_recomputed_layer_on_the_gpu() -> None:
    """trainer.offload_activations: the stored activations live in pinned CPU memory but for the input in use and
    the prefetched one; the recomputed layer and the working set stay on the GPU."""
    base = ["model=medgemma_4b", "model.init=random", "quantization=nf4", "trainer.micro_batch_size=8"]
    base += ["packing.max_seq_len=2048"]
    kept, offloaded = estimate(compose(base)), estimate(compose([*base, "trainer.offload_activations=true"]))
    layer_input = 2 * 2560 * 8 * 2048
    assert kept.parts["activations/stored"] == 34 * layer_input
    assert offloaded.parts["activations/stored"] == 2 * layer_input
    assert offloaded.parts["activations/recompute"] == kept.parts["activations/recompute"] > 0
    # the peak is taken where backward's stored inputs and gradients are largest: nearly all of it goes
    assert 0.9 * 32 * layer_input < kept.peak_bytes - offloaded.peak_bytes


@pytest.mark.parametrize(("kernel", "bytes_per_logit"), [("torch", Calibration().logits_fp32_copies * 4), ("auto", 2)])
def test_loss_chunk_scales_with_chunk_size(kernel: str, bytes_per_logit: float) -> None:
    """torch's ops hold fp32 copies of the chunk's logits; the Triton kernel one bf16 buffer (gradient in place)."""
    base = ["model=medgemma_4b", "model.init=random", "model.dtype=bfloat16", f"trainer.loss_kernel={kernel}"]
    small = estimate(compose([*base, "trainer.loss_chunk_size=256"]))
    big = estimate(compose([*base, "trainer.loss_chunk_size=1024"]))
    delta = big.parts["loss/chunk"] - small.parts["loss/chunk"]
    assert delta == bytes_per_logit * (1024 - 256) * 262208


# the measurements before 2026-11-30 ran transformers' own norms and MLP (trainer.kernels defaulted to none),
# peft's own LoRA forward (lora.fused came on 2026-11-30) and LoRA dropout 0.05 (the default until issue 30)
TRANSFORMERS_PATH = ["trainer.kernels=none", "trainer.rms_norm=kernels", "lora.fused=false", "lora.dropout=0.05"]
GEMMA_4B = ["model=medgemma_4b", "model.init=random", "model.dtype=bfloat16", "trainer.autocast_dtype=bfloat16"]


@pytest.mark.parametrize(
    ("rows", "per_row", "chunk_rows"),
    [(1, 45.0, 45), (1, 765.0, 765), (1, 1900.0, 1024), (4, 765.0, 1024), (1, 5000.0, 1024)],
)
def test_loss_chunk_holds_min_of_chunk_and_label_tokens(rows: int, per_row: float, chunk_rows: int) -> None:
    # the chunked loss sends only label tokens to the output projection: the logits chunk has min(chunk, labels) rows
    cfg = compose([*GEMMA_4B, "packing=packed", f"trainer.micro_batch_size={rows}", "trainer.loss_chunk_size=1024",
                   "trainer.loss_kernel=torch"])  # fmt: skip
    tokens, hidden, vocab = rows * 2048, 2560, 262208
    labels = min(tokens, rows * per_row)
    est = estimate(cfg, label_tokens_per_row=per_row)
    logits = Calibration().logits_fp32_copies * chunk_rows * vocab * 4
    assert est.label_tokens == labels
    assert est.parts["loss/chunk"] == pytest.approx(logits + hidden * (4 * labels + 8 * tokens))
    assert estimate(cfg).parts["loss/chunk"] >= est.parts["loss/chunk"]  # None: every token carries a label


# Measured on 2026-11-25 by `python -m medtune.bench --steps 10 --warmup 3` on an H100 80GB (see Calibration), with
# torch's loss ops (before trainer.loss_kernel existed):
# (peak alloc GiB over the timed steps, load peak GiB, label tokens per row of the largest timed micro-batch).
H100 = {
    "bf16_pad": (["quantization=none", "packing=pad_to_max"], 8.61, 8.48, 142),
    "nf4_pad": (["quantization=nf4", "packing=pad_to_max"], 4.06, 3.05, 142),
    "bf16_packed": (["quantization=none", "packing=packed"], 9.76, 8.54, 873),
    "nf4_packed": (["quantization=nf4", "packing=packed"], 5.34, 3.05, 873),
}


@pytest.mark.parametrize("name", list(H100))
def test_calibration_matches_h100_measurements(name: str) -> None:
    overrides, peak_gib, load_gib, per_row = H100[name]
    common = ["trainer.micro_batch_size=1", "trainer.grad_ckpt_every=1", "packing.max_seq_len=2048", "lora.r=16"]
    common += ["trainer.loss_kernel=torch", *TRANSFORMERS_PATH]
    est = estimate(compose([*GEMMA_4B, *common, *overrides]), label_tokens_per_row=per_row)
    # the fit is within 3%; issue 10 asks for 15%, 5% keeps the calibration from drifting unnoticed
    assert est.peak_gib == pytest.approx(peak_gib, rel=0.05)
    if "quantization=none" in overrides:  # measured when from_config allocated the tied head a second time; the
        load_gib -= 262208 * 2560 * 2 / 1024**3  # build now fills it once (models/materialize.py): 1.25 GiB less
    assert est.load_peak_bytes / 1024**3 == pytest.approx(load_gib, rel=0.05)


# Measured on 2026-11-25 on an H100 80GB by experiments/gpu/llama70b_1gpu.sh (10 steps, 1x2048 packed rows, ~305
# label tokens per row): LLaMA 3.3 70B architecture, random weights, nf4, full width, N decoder layers, one rank.
# (layers, sharding) -> train peak alloc GiB; results in experiments/results/llama70b_1gpu/.
H100_70B = {
    (2, "none"): 6.703,
    (80, "none"): 43.465,
    (2, "fsdp"): 10.774,
    (4, "fsdp"): 11.716,
    (8, "fsdp"): 13.602,
    (80, "fsdp"): 47.536,
}


@pytest.mark.parametrize(("layers", "sharding"), list(H100_70B))
def test_llama70b_estimate_matches_h100(layers: int, sharding: str) -> None:
    overrides = [
        "model=llama3_3_70b",
        "model.init=random",
        "quantization=nf4",
        "packing=packed",
        f"sharding={sharding}",
    ]
    overrides += ["packing.max_seq_len=2048", "trainer.micro_batch_size=1", f"model.num_layers={layers}"]
    overrides += ["trainer.loss_kernel=torch", *TRANSFORMERS_PATH]  # as measured, before these kernels
    est = estimate(compose(overrides), world_size=1, label_tokens_per_row=305)
    assert est.peak_gib == pytest.approx(H100_70B[layers, sharding], rel=0.03)


def test_fsdp_keeps_the_root_gathered_even_on_one_rank() -> None:
    base = ["model=llama3_3_70b", "model.init=random", "quantization=nf4", "model.num_layers=2"]
    none, one = estimate(compose([*base, "sharding=none"])), estimate(compose([*base, "sharding=fsdp"]), world_size=1)
    two = estimate(compose([*base, "sharding=fsdp"]), world_size=2)
    embed_head = none.parts["weights/embed_head"]
    assert one.parts["fsdp/gathered"] == pytest.approx(embed_head)
    per_layer = none.parts["weights/layers"] / 2
    # the shard plus the gathered buffers hold two whole roots per rank at any world size (H100 at 1, H200 at 2)
    assert two.parts["fsdp/gathered"] == pytest.approx(1.5 * embed_head + 2 * per_layer)
    assert two.parts["weights/embed_head"] == pytest.approx(embed_head / 2)


# Measured on 2026-11-29 on two H200s by experiments/gpu/fsdp_2gpu.sh (results in experiments/results/fsdp_2gpu/):
# per-rank peak allocated GiB over training and the load peak, at 2 ranks under FSDP.
H200_2GPU = {
    "llama70b_1x2048": (["model=llama3_3_70b", "trainer.micro_batch_size=1"], 305, 30.525, 38.425),
    "gemma4b_4x2048": ([*GEMMA_4B[:1], *GEMMA_4B[2:], "trainer.micro_batch_size=4"], 1051.5, 7.451, 2.972),
}


@pytest.mark.parametrize("name", list(H200_2GPU))
def test_two_rank_fsdp_matches_h200_measurements(name: str) -> None:
    overrides, per_row, peak_gib, load_gib = H200_2GPU[name]
    common = ["model.init=random", "quantization=nf4", "sharding=fsdp", "packing=packed", "packing.max_seq_len=2048"]
    common += [*TRANSFORMERS_PATH, "sharding.load=whole"]  # the defaults on 2026-11-29 (whole-model loading)
    est = estimate(compose([*common, *overrides]), world_size=2, label_tokens_per_row=per_row)
    assert est.peak_gib == pytest.approx(peak_gib, rel=0.03)
    assert est.load_peak_bytes / 1024**3 == pytest.approx(load_gib, rel=0.03)  # the whole model, on every rank


def test_heldout_peak_within_ten_percent_of_the_h200_measurement() -> None:
    """The one held-out peak measured so far: LLaMA 3.3 70B at 2 ranks (fsdp_2gpu's c_llama70b, sys/eval 28.80 GiB
    per rank, 1 x 2048 rows); the estimator composes 27.52 from parts calibrated on training steps (-4.4%)."""
    overrides, per_row, _, _ = H200_2GPU["llama70b_1x2048"]
    common = ["model.init=random", "quantization=nf4", "sharding=fsdp", "packing=packed", "packing.max_seq_len=2048"]
    est = estimate(compose([*common, *TRANSFORMERS_PATH, *overrides]), world_size=2, label_tokens_per_row=per_row)
    assert est.heldout_peak_bytes / 1024**3 == pytest.approx(28.795, rel=0.10)


def test_backward_counts_gradients_and_stored_inputs_at_their_larger_end() -> None:
    cfg = compose([*GEMMA_4B, "packing=pad_to_max", "trainer.grad_ckpt_every=1"])
    p = estimate(cfg, label_tokens_per_row=0).parts
    static = sum(v for k, v in p.items() if k.split("/")[0] in ("weights", "fixed")) + p["lora/params"]
    static += p["optimizer/states"] + p["activations/masks"]
    first_layer = p["activations/stored"] + p["lora/grads"] / 34  # stored inputs dominate: the last layer's grads
    expected = static + first_layer + p["activations/recompute"] + p["activations/work"]
    assert estimate(cfg, label_tokens_per_row=0).peak_bytes == pytest.approx(expected)


def test_random_bf16_load_fills_a_tied_head_once() -> None:
    """The weights and the adapters' build transient; no second vocab x hidden matrix for the tied head."""
    cfg = compose([*GEMMA_4B, "quantization=none"])
    p = estimate(cfg)
    weights = p.parts["weights/layers"] + p.parts["weights/embed_head"] + p.parts["weights/buffers"]
    assert p.load_peak_bytes == weights + 4 * lora_param_count(load_arch(cfg), cfg)


def test_cpu_offload_moves_the_shards_off_the_gpu() -> None:
    """sharding.cpu_offload: shards, adapter gradients and optimizer state in CPU memory; the GPU keeps the gathered
    root and two layers in flight; loading per layer then holds one unit on the GPU, not the shards."""
    base = ["+experiment=paper_llama70b_fsdp", "model.init=random", "trainer.grad_ckpt_every=1"]
    on, off = (estimate(compose([*base, f"sharding.cpu_offload={v}"]), world_size=2) for v in ("true", "false"))
    moved = ("weights/embed_head", "lora/params", "lora/grads", "optimizer/states")
    state = quant_state_bytes(load_arch(compose(base)), compose(base))  # on the GPU: no parameter, not offloaded
    assert all(on.parts[k] == 0 for k in moved) and on.parts["weights/layers"] == state
    assert on.parts["cpu/offloaded"] == pytest.approx(sum(off.parts[k] for k in [*moved, "weights/layers"]) - state / 2)
    per_layer = off.parts["weights/layers"] * 2 / 80
    assert on.parts["fsdp/gathered"] == pytest.approx(off.parts["weights/embed_head"] * 2 + 2 * per_layer)
    assert on.peak_bytes < off.peak_bytes - off.parts["weights/layers"] + state
    root = off.parts["weights/embed_head"] * 2
    assert on.load_peak_bytes == pytest.approx(state + root + off.parts["weights/buffers"])


def test_quant_state_is_the_quantised_bytes_less_the_packed_codes() -> None:
    """nf4 with double quantisation: per 64 weights one uint8 absmax, per 256 blocks an fp32 absmax, plus the code
    tables (64 + 1028 B) per weight; LLaMA 3.3 70B: 1.01 GiB over its 80 layers; none without quantisation."""
    cfg = compose(["model=llama3_3_70b", "quantization=nf4"])
    arch = load_arch(cfg)
    per_layer = 0
    for n_in, n_out in arch.linears().values():
        blocks = n_in * n_out // 64
        per_layer += blocks + 4 * -(-blocks // 256) + 64 + 1028
    assert quant_state_bytes(arch, cfg) == 80 * per_layer
    assert quant_state_bytes(arch, cfg) / 1024**3 == pytest.approx(1.012, abs=0.001)
    single = compose(["model=llama3_3_70b", "quantization=nf4", "quantization.double_quant=false"])
    assert quant_state_bytes(arch, single) == 80 * sum(4 * (i * o // 64) + 64 for i, o in arch.linears().values())
    assert quant_state_bytes(arch, compose(["model=llama3_3_70b", "quantization=none"])) == 0


def test_heldout_peak_is_the_static_bytes_and_one_no_grad_layer() -> None:
    """The held-out loss after training: the static bytes (gradients gone, optimizer state still there), the residual
    stream in and out, one layer's activations and the loss chunk; CPU offload takes the moved parts off it."""
    base = ["model=llama3_3_70b", "model.init=random", "quantization=nf4", "sharding=fsdp", "packing=packed"]
    base += ["packing.max_seq_len=2048", "trainer.micro_batch_size=1", "trainer.grad_ckpt_every=1"]
    on, off = (estimate(compose([*base, f"sharding.cpu_offload={v}"])) for v in ("true", "false"))
    cfg, p = compose(base), off.parts
    arch, tokens = load_arch(cfg), 2048
    static = sum(v for k, v in p.items() if k.split("/")[0] in ("weights", "fsdp", "fixed"))
    static += p["lora/params"] + p["optimizer/states"] + p["activations/masks"]
    forward = 2 * 2 * arch.hidden * tokens + layer_activation_bytes(arch, cfg, tokens, Calibration()) + p["loss/chunk"]
    assert off.heldout_peak_bytes == pytest.approx(static + forward)
    assert off.heldout_peak_bytes < off.peak_bytes  # no stored activations, no gradients
    moved = p["weights/layers"] + p["weights/embed_head"] + p["lora/params"] + p["optimizer/states"]
    gathered = on.parts["fsdp/gathered"] - p["fsdp/gathered"]  # with offload: the layers in flight, at one rank too
    kept = quant_state_bytes(arch, cfg)  # the quantisation state stays on the GPU
    assert on.heldout_peak_bytes == pytest.approx(off.heldout_peak_bytes - moved + gathered + kept)


def test_cli_json_has_every_phase_and_the_load_units(capsys: pytest.CaptureFixture[str]) -> None:
    """--json: load, train and held-out peaks, and the two units per-layer loading holds one of (a decoder layer
    with two linears being filled in model.dtype, the root)."""
    base = ["model=llama3_3_70b", "model.init=random", "quantization=nf4", "sharding=fsdp", "sharding.cpu_offload=true"]
    main([*base, "--json"])
    out = json.loads(capsys.readouterr().out)
    cfg = compose(base)
    arch, gib = load_arch(cfg), 1024**3
    w, n_lora = weight_bytes(arch, cfg), lora_param_count(arch, cfg)
    adapters = {"float32": 4, "bfloat16": 2}[cfg.lora.dtype] * n_lora
    layer = (w["layers"] + adapters) / arch.layers + 2 * arch.hidden * arch.intermediate * 2  # two bf16 linears
    assert out["load_layer_gib"] == pytest.approx(layer / gib) and out["load_root_gib"] == w["embed_head"] / gib
    state = quant_state_bytes(arch, cfg)  # every layer's, on the GPU by the end of loading
    assert out["load_peak_gib"] == pytest.approx((state + max(layer, w["embed_head"]) + w["buffers"]) / gib)
    assert 0 < out["heldout_peak_gib"] < out["peak_gib"]


def test_cli_prints_label_tokens(capsys: pytest.CaptureFixture[str]) -> None:
    main(["model=tiny_llama", "packing.max_seq_len=64", "trainer.micro_batch_size=2", "label_tokens_per_row=20"])
    assert "40 per micro-batch (label_tokens_per_row=20)" in capsys.readouterr().out
    main(["model=tiny_llama", "packing.max_seq_len=64", "trainer.micro_batch_size=2"])
    assert "128 per micro-batch (worst case: every token)" in capsys.readouterr().out
    with pytest.raises(SystemExit, match="label_tokens_per_row='many'"):
        main(["model=tiny_llama", "label_tokens_per_row=many"])


def test_cli_help_and_bad_arguments(capsys: pytest.CaptureFixture[str]) -> None:
    main(["--help"])
    assert "python -m medtune.memory model=" in capsys.readouterr().out
    with pytest.raises(SystemExit, match=r"world_size=1\.5: expected a whole number"):
        main(["model=tiny_llama", "world_size=1.5"])
    for argv, message in (
        (["model=no_such_model"], r"(?s)error: .*model/no_such_model.*gemma3_270m.*see --help"),
        (["model=tiny_llama", "trainer.micro_batch_size=0"], r"trainer\.micro_batch_size"),
        (["--config-dir", "no_such_folder", "model=tiny_llama"], r"--config-dir no_such_folder: no such folder"),
    ):
        with pytest.raises(SystemExit) as stop:  # bad input: exit 2, one message on stderr
            main(argv)
        assert stop.value.code == 2 and re.search(message, capsys.readouterr().err)


def test_bench_predicts_with_the_largest_timed_micro_batch() -> None:
    from types import SimpleNamespace

    from medtune.bench.run import _timed_label_tokens_per_row

    labels = [10, 20, 30, 40, 50, 60]  # micro-batches of 2 rows; warmup 1 step x 2 accumulation, then 2 steps
    batches = [({"n_label_tokens": torch.tensor(n)}, None) for n in labels]
    recipe = SimpleNamespace(data=SimpleNamespace(train_stream=lambda position: iter(batches)))
    cfg = SimpleNamespace(trainer=SimpleNamespace(grad_accum_steps=2, micro_batch_size=2))
    out = _timed_label_tokens_per_row(recipe, cfg, SimpleNamespace(warmup=1, steps=2))
    assert out == {"max": 30.0, "mean": 22.5}  # batches 3-6: 30, 40, 50, 60 tokens over 2 rows


def test_cli_prints_json(capsys: pytest.CaptureFixture[str]) -> None:
    main(["model=tiny_llama", "quantization=nf4", "sharding=fsdp", "world_size=2", "--json"])
    out = json.loads(capsys.readouterr().out)
    assert out["world_size"] == 2 and out["peak_gib"] > 0 and "weights/layers" in out["parts"]


def test_unknown_target_module_is_named() -> None:
    with pytest.raises(ValueError, match="qkv_proj"):
        estimate(compose(["model=tiny_llama", "lora.target_modules=[qkv_proj]"]))


# Issue 30's measurements (one H100 80GB, 2026-12-07, `python -m medtune.bench`, each configuration in its own
# process; Gemma 3 4B text architecture, random weights, nf4 unless said, LoRA r=16, 8 x 2048 rows unless said):
# the fused path (varlen, Liger, torch's RMSNorm, bf16 adapters, dropout 0) at several recomputation levels, and
# transformers' path (the defaults before issue 30). Peak allocated GiB.
OLD_DEFAULTS = ["trainer.kernels=none", "trainer.rms_norm=kernels", "lora.dropout=0.05"]  # before issue 30
FUSED = ["packing.attention=varlen", "trainer.kernels=liger", "trainer.rms_norm=torch", "lora.dtype=bfloat16",
         "lora.dropout=0"]  # fmt: skip
H100_ISSUE_30 = {
    "fused_ckpt_all": ([*FUSED, "trainer.grad_ckpt_every=1"], 7.84),
    "fused_ckpt_all_4_rows": ([*FUSED, "trainer.grad_ckpt_every=1", "trainer.micro_batch_size=4"], 5.48),
    "fused_ckpt_every_2nd": ([*FUSED, "trainer.grad_ckpt_every=2"], 34.38),
    "fused_no_ckpt": ([*FUSED, "trainer.grad_ckpt_every=0"], 61.75),
    "fused_bf16_base": ([*FUSED, "trainer.grad_ckpt_every=1", "quantization=none"], 12.23),
    "fused_bf16_base_no_ckpt": ([*FUSED, "trainer.grad_ckpt_every=0", "quantization=none"], 66.18),
    "transformers_path": ([*OLD_DEFAULTS, "trainer.grad_ckpt_every=1"], 9.91),
    "transformers_path_4_rows": (
        [*OLD_DEFAULTS, "trainer.grad_ckpt_every=1", "trainer.micro_batch_size=4"],
        6.55,
    ),
}


@pytest.mark.parametrize("name", list(H100_ISSUE_30))
def test_prediction_within_ten_percent_of_issue_30_measurements(name: str) -> None:
    """Issue 30's bar: every measured configuration, checkpointing off and partial included, within +-10%."""
    overrides, peak_gib = H100_ISSUE_30[name]
    common = ["quantization=nf4", "packing=packed", "packing.max_seq_len=2048", "lora.r=16"]
    common.append("trainer.micro_batch_size=8")
    est = estimate(compose([*GEMMA_4B, *common, *overrides]))
    assert est.peak_gib == pytest.approx(peak_gib, rel=0.10)
