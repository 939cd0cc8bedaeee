"""CapiTrainer under DeepSpeed ZeRO-3 on CPU; run with `DS_ACCELERATOR=cpu torchrun --nproc_per_node 2`.

Records the gathered student after every optimizer step, recomputes the teacher with the EMA formula, and saves
(rank 0) the formula's teacher, the trainer's gathered teacher and facts about the sharding to --out.
"""

import argparse
import json
import sys

import deepspeed
import numpy as np
import PIL.Image
import torch
import torch.distributed as dist
from safetensors.torch import save_file
from transformers import TrainerCallback

from hf_mim import CapiConfig, CapiForPreTraining
from hf_mim.data import PretrainingCollator, SafeImageTransform, pretraining_transform
from hf_mim.trainers import CapiTrainer, CapiTrainingArguments


def gathered(module) -> dict[str, torch.Tensor]:
    params = dict(module.named_parameters())
    with deepspeed.zero.GatheredParameters(list(params.values()), modifier_rank=None):
        return {name: p.detach().clone().float() for name, p in params.items()}


class RecordStudent(TrainerCallback):
    """Runs after the trainer's own callback (added later), i.e. after the optimizer step and the EMA update."""

    def __init__(self, trainer):
        self.trainer = trainer
        self.students = []

    def on_step_end(self, args, state, control, **kwargs):
        model = self.trainer.accelerator.unwrap_model(self.trainer.model)
        self.students.append(gathered(model.capi))


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--steps", type=int, default=3)
    args = parser.parse_args()

    config = CapiConfig.tiny(drop_path_rate=0.0, num_prototypes=32)
    torch.manual_seed(0)
    model = CapiForPreTraining(config)
    rng = np.random.default_rng(0)
    import datasets

    images = [PIL.Image.fromarray(rng.integers(0, 255, (64, 64, 3), dtype=np.uint8)) for _ in range(16)]
    dataset = datasets.Dataset.from_dict({"image": images}).with_transform(
        SafeImageTransform(pretraining_transform(56))
    )
    ds_config = {
        "zero_optimization": {"stage": 3, "stage3_gather_16bit_weights_on_model_save": True},
        "train_micro_batch_size_per_gpu": "auto",
        "train_batch_size": "auto",
        "gradient_accumulation_steps": "auto",
        "gradient_clipping": "auto",
        "zero_allow_untested_optimizer": True,
        "zero_force_ds_cpu_optimizer": False,
    }
    training_args = CapiTrainingArguments(
        output_dir=args.out + ".run",
        per_device_train_batch_size=2,
        max_steps=args.steps,
        learning_rate=1e-2,
        warmup_steps=0,
        teacher_momentum=0.9,
        teacher_momentum_end=0.9,
        teacher_momentum_warmup_steps=0,
        save_strategy="no",
        logging_steps=1,
        remove_unused_columns=False,
        report_to="none",
        use_cpu=True,
        deepspeed=ds_config,
        disable_tqdm=True,
    )
    collator = PretrainingCollator.for_model(model)
    trainer = CapiTrainer(model=model, args=training_args, train_dataset=dataset, data_collator=collator)
    recorder = RecordStudent(trainer)
    trainer.add_callback(recorder)
    trainer.train()
    engine_model = trainer.accelerator.unwrap_model(trainer.model)
    some_param = next(engine_model.teacher.parameters())
    facts = {
        "world_size": dist.get_world_size(),
        "teacher_partitioned": bool(
            hasattr(some_param, "ds_tensor") and some_param.ds_tensor.numel() < some_param.ds_numel
        ),
        "student_partitioned": bool(
            next(engine_model.capi.parameters()).ds_tensor.numel() < next(engine_model.capi.parameters()).ds_numel
        ),
        "momenta": [trainer.teacher_momentum_at(step) for step in range(args.steps)],
    }
    final_teacher = gathered(engine_model.teacher)
    # initial teacher == initial student: rebuild it with the same seed on rank 0 (no sharding involved)
    torch.manual_seed(0)
    initial = {n: p.detach().clone() for n, p in CapiForPreTraining(config).teacher.named_parameters()}
    expected = initial
    for momentum, student in zip(facts["momenta"], recorder.students):
        expected = {n: momentum * expected[n] + (1 - momentum) * student[n] for n in expected}
    trainer.save_model(args.out + ".model")  # ZeRO-3 consolidation of the full model, teacher included
    if dist.get_rank() == 0:
        save_file({f"formula.{k}": v.contiguous() for k, v in expected.items()}
                  | {f"trainer.{k}": v.contiguous() for k, v in final_teacher.items()}
                  | {f"initial.{k}": v.contiguous() for k, v in initial.items()}, args.out)  # fmt: skip
        with open(args.out + ".json", "w") as handle:
            json.dump(facts, handle)
    dist.barrier()
    dist.destroy_process_group()
    return 0


if __name__ == "__main__":
    sys.exit(main())
