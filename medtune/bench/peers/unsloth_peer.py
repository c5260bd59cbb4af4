"""unsloth (FastLanguageModel + its patched TRL) on medtune's benchmark samples, LoRA dropout 0, its packing.

Run by `python -m medtune.bench --peers unsloth --peer-env unsloth=<site dir>` in an environment of its own (it pins
transformers, trl and datasets below medtune's); writes one JSON (see common.py).
"""

from __future__ import annotations

import time

from medtune.bench.peers.common import StepClock, arguments, read_samples, write_result


def main() -> None:
    """Train with unsloth for --steps optimizer steps and write the measurements."""
    args = arguments(__doc__.split("\n")[0])
    clock = StepClock()
    samples = read_samples(args.samples)
    clock.loaded_at = time.perf_counter()  # unsloth patches transformers when imported: its import is load time
    import torch
    import unsloth
    from datasets import Dataset
    from transformers import TrainerCallback
    from trl import SFTConfig, SFTTrainer
    from unsloth import FastLanguageModel

    model, tokenizer = FastLanguageModel.from_pretrained(
        model_name=args.model, max_seq_length=args.max_len, load_in_4bit=args.quant == "nf4", dtype=torch.bfloat16
    )
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = FastLanguageModel.get_peft_model(
        model, r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=args.lora_dropout, target_modules=targets,
        use_gradient_checkpointing="unsloth", random_state=0,  # its recommended mode: layer inputs offloaded to the CPU
    )  # fmt: skip

    class Clocked(SFTTrainer):
        def training_step(self, model, inputs, num_items_in_batch=None):
            mask = inputs.get("attention_mask")
            clock.add_tokens(inputs["input_ids"].numel() if mask is None else int(mask.sum()))
            return super().training_step(model, inputs, num_items_in_batch)

    class OnStepEnd(TrainerCallback):
        def on_step_end(self, *_: object, **__: object) -> None:
            clock.step_end()
            if len(clock.ends) == args.warmup:
                torch.cuda.reset_peak_memory_stats()

    config = SFTConfig(
        output_dir=str(args.out) + ".trainer", max_steps=args.steps, per_device_train_batch_size=args.rows,
        gradient_accumulation_steps=1, learning_rate=args.lr, lr_scheduler_type="constant", warmup_steps=0,
        max_length=args.max_len, packing=True, bf16=True, report_to="none", logging_steps=10, save_strategy="no",
        dataloader_num_workers=0, seed=0,
    )  # fmt: skip
    trainer = Clocked(
        model=model, args=config, train_dataset=Dataset.from_list(samples), processing_class=tokenizer,
        callbacks=[OnStepEnd()],
    )  # fmt: skip
    trainer.train()
    extra = {"framework": f"unsloth {unsloth.__version__}", "isolation": "unsloth packing (its own masks)"}
    write_result(args.out, clock.result(args.warmup, extra))


if __name__ == "__main__":
    main()
