"""TRL's SFTTrainer + peft + bitsandbytes on medtune's benchmark samples (bfd packing, padding-free); `--liger` adds
Liger kernels. Run by `python -m medtune.bench --peers trl,trl_liger`; writes one JSON (see common.py)."""

from __future__ import annotations

import time

from medtune.bench.peers.common import StepClock, arguments, read_samples, write_result


def _model(args, torch):
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    quant = None
    if args.quant == "nf4":
        quant = BitsAndBytesConfig(
            load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_use_double_quant=True,
            bnb_4bit_compute_dtype=torch.bfloat16, bnb_4bit_quant_storage=torch.bfloat16,
        )  # fmt: skip
    cuda = torch.cuda.is_available()
    return AutoModelForCausalLM.from_pretrained(  # nf4: quantised as it loads onto the GPU (the usual QLoRA path)
        args.model, quantization_config=quant, dtype=torch.bfloat16 if cuda else torch.float32,
        attn_implementation="sdpa", device_map={"": 0} if cuda else None,
    )  # fmt: skip


def main() -> None:
    """Train with SFTTrainer for --steps optimizer steps and write the measurements."""
    args = arguments(__doc__.split("\n")[0])
    import torch
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import AutoTokenizer, TrainerCallback
    from trl import SFTConfig, SFTTrainer

    clock = StepClock()

    class Clocked(SFTTrainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            mask = inputs.get("attention_mask")
            clock.add_tokens(inputs["input_ids"].numel() if mask is None else int(mask.sum()))  # padding-free: all
            return super().training_step(model, inputs, num_items_in_batch)

    class OnStepEnd(TrainerCallback):
        def on_step_end(self, *_: object, **__: object) -> None:
            clock.step_end()
            if len(clock.ends) == args.warmup and torch.cuda.is_available():
                torch.cuda.reset_peak_memory_stats()  # the steady state's peak, as medtune.bench reports it

    samples = read_samples(args.samples)
    clock.loaded_at = time.perf_counter()
    model = _model(args, torch)
    config = SFTConfig(
        output_dir=str(args.out) + ".trainer", max_steps=args.steps, per_device_train_batch_size=args.rows,
        gradient_accumulation_steps=1, learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0,
        max_length=args.max_len, packing=True, packing_strategy="bfd", padding_free=True,
        gradient_checkpointing=True, gradient_checkpointing_kwargs={"use_reentrant": False},
        bf16=torch.cuda.is_available(), use_liger_kernel=args.liger, report_to="none", logging_steps=10,
        save_strategy="no", dataloader_num_workers=0, seed=0, use_cpu=not torch.cuda.is_available(),
    )  # fmt: skip
    lora = LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=args.lora_dropout,
                      target_modules="all-linear", task_type="CAUSAL_LM")  # fmt: skip
    trainer = Clocked(
        model=model, args=config, train_dataset=Dataset.from_list(samples), peft_config=lora,
        processing_class=AutoTokenizer.from_pretrained(args.model), callbacks=[OnStepEnd()],
    )  # fmt: skip
    trainer.train()
    import trl

    extra = {
        "framework": f"trl {trl.__version__}" + (" + liger" if args.liger else ""),
        # padding-free packing passes position_ids that restart per sample; with sdpa, transformers keeps samples
        # apart only where it turns them into per-sample masks (checked for medtune's own path, not for TRL's here)
        "isolation": "padding-free position_ids (sdpa)",
    }
    write_result(args.out, clock.result(args.warmup, extra))


if __name__ == "__main__":
    main()
