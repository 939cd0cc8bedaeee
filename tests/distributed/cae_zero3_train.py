"""CaeTrainer (CAE v2 tiny) under DeepSpeed ZeRO-3 on CPU; run with `DS_ACCELERATOR=cpu torchrun --nproc_per_node 2`.

As run_cae.py does, the training arguments (which switch transformers' ZeRO-3 mode on) come first, then the model and
the frozen CLIP teacher, loaded from a folder (`load_target_model(2, folder)`) and attached with `set_target_model`:
the teacher is outside the module tree, so DeepSpeed must neither partition nor train it. The outcome of that load is
recorded; unless it gave a whole teacher, the same CLIP built before the arguments (whole) is attached instead, so the
trainer part is checked either way. Rank 0 writes to --out a JSON of facts (world size, the load's outcome, whether
the student and the teacher were partitioned, the largest change of any teacher weight on any rank, the losses) and
the consolidated model to --out + ".model".
"""

import argparse
import json
import os
import sys

import datasets
import numpy as np
import PIL.Image
import torch
import torch.distributed as dist
from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

from hf_mim import CaeConfig, CaeForPreTraining
from hf_mim.data import SafeImageTransform, TwoViewCollator, TwoViewCropTransform
from hf_mim.models.cae.targets_cae import ClipTeacher, load_target_model
from hf_mim.trainers import CaeTrainer, CaeTrainingArguments


def partitioned(module) -> bool:
    """Whether ZeRO-3 partitions this module's parameters: a local shard (`ds_tensor`) smaller than the whole. (Small
    ones are also kept whole, "persistent", in `.data`, so `.data` alone would not tell.)"""
    return any(hasattr(p, "ds_tensor") and p.ds_tensor.numel() < p.ds_numel for p in module.parameters())


def tiny_clip(config: CaeConfig) -> CLIPVisionModelWithProjection:
    torch.manual_seed(1)
    clip = CLIPVisionConfig(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                            image_size=config.image_size, patch_size=config.patch_size,
                            projection_dim=config.target_hidden_size)  # fmt: skip
    return CLIPVisionModelWithProjection(clip)


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()

    config = CaeConfig.tiny(cae_version=2, drop_path_rate=0.0)
    prebuilt = tiny_clip(config)  # built before ZeRO-3 is switched on (full), the fallback teacher
    expected = {name: tensor.clone() for name, tensor in prebuilt.state_dict().items()}
    teacher_dir = f"{args.out}.clip{os.environ.get('RANK', '0')}"  # one folder per rank: no race, no barrier
    prebuilt.save_pretrained(teacher_dir)

    ds_config = {
        "zero_optimization": {"stage": 3, "stage3_gather_16bit_weights_on_model_save": True},
        "train_micro_batch_size_per_gpu": "auto",
        "train_batch_size": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
    }
    training_args = CaeTrainingArguments(
        output_dir=args.out + ".run",
        per_device_train_batch_size=2,
        max_steps=args.steps,
        warmup_steps=0,
        save_strategy="no",
        logging_steps=1,
        remove_unused_columns=False,
        report_to="none",
        use_cpu=True,
        deepspeed=ds_config,
        disable_tqdm=True,
    )
    if training_args.world_size != 2:  # as run() does (it logs it), this sets the process group up
        raise SystemExit(f"run on 2 ranks, not {training_args.world_size}")
    torch.manual_seed(0)
    model = CaeForPreTraining(config)
    # run_cae.py loads the target network here, after the arguments: under ZeRO-3 transformers' from_pretrained
    # (and _from_config, which CLIPVisionModelWithProjection's constructor calls) enter deepspeed.zero.Init.
    try:
        loaded = load_target_model(2, teacher_dir)
        load_after_arguments = "partitioned" if any(hasattr(p, "ds_id") for p in loaded.parameters()) else "full"
    except Exception as error:  # noqa: BLE001  (recorded for the test)
        loaded, load_after_arguments = None, f"{type(error).__name__}: {error}"[:500]
    teacher = loaded if load_after_arguments == "full" else ClipTeacher(prebuilt)
    model.set_target_model(teacher)

    rng = np.random.default_rng(0)
    images = [PIL.Image.fromarray(rng.integers(0, 255, (72, 80, 3), dtype=np.uint8)) for _ in range(12)]
    dataset = datasets.Dataset.from_dict({"image": images}).with_transform(
        SafeImageTransform(TwoViewCropTransform.cae_v2(config.image_size))
    )
    collator = TwoViewCollator.for_model(model)
    trainer = CaeTrainer(model=model, args=training_args, train_dataset=dataset, data_collator=collator)
    trainer.train()

    engine_model = trainer.accelerator.unwrap_model(trainer.model)
    teacher = engine_model.target_model
    change = max((t - expected[n]).abs().max().item() for n, t in teacher.clip.state_dict().items())
    change = torch.tensor([change if all(p.numel() > 0 for p in teacher.parameters()) else float("inf")])
    dist.all_reduce(change, op=dist.ReduceOp.MAX)
    facts = {
        "world_size": dist.get_world_size(),
        "target_loaded_after_arguments": load_after_arguments,
        "student_partitioned": partitioned(engine_model.cae),
        "teacher_partitioned": partitioned(teacher),
        "teacher_has_ds_id": any(hasattr(p, "ds_id") for p in teacher.parameters()),
        "teacher_max_change": change.item(),
        "losses": [entry["loss"] for entry in trainer.state.log_history if "loss" in entry],
    }
    trainer.save_model(args.out + ".model")  # ZeRO-3 consolidation of the full model (no teacher in it)
    if dist.get_rank() == 0:
        with open(args.out, "w") as handle:
            json.dump(facts, handle)
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
