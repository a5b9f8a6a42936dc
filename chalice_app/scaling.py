"""How a training job spreads: instances × GPUs per instance, and when the container's launcher starts them.

SageMaker's PyTorch container runs ``train.py`` under ``torchrun`` when the hyperparameter
``sagemaker_torch_distributed_enabled`` is true: AWS's ``sagemaker-training`` toolkit
(``sagemaker_training/torch_distributed.py``) builds ``torchrun --nnodes <instances> --nproc_per_node
<GPUs found on the instance> --master_addr algo-1 --master_port 7777 --node_rank <i>``; on a CPU
instance one process per instance (``sagemaker_training/runner.py``). One instance with one GPU (or
none) runs ``train.py`` as a plain process, as it always has.
"""

from __future__ import annotations

LAUNCHER = "sagemaker_torch_distributed_enabled"

# NVIDIA GPUs per instance for the types with more than one, from AWS's accelerated-computing instance
# specifications (https://docs.aws.amazon.com/ec2/latest/instancetypes/ac.html). Every other size of
# these families has one GPU.
MULTI_GPU = {
    "g4dn.12xlarge": 4,
    "g5.12xlarge": 4,
    "g5.24xlarge": 4,
    "g5.48xlarge": 8,
    "g6.12xlarge": 4,
    "g6.24xlarge": 4,
    "g6.48xlarge": 8,
    "g6e.12xlarge": 4,
    "g6e.24xlarge": 4,
    "g6e.48xlarge": 8,
    "p4d.24xlarge": 8,
    "p4de.24xlarge": 8,
    "p5.48xlarge": 8,
    "p5e.48xlarge": 8,
    "p5en.48xlarge": 8,
    "p6-b200.48xlarge": 8,
}
SINGLE_GPU_FAMILIES = ("g4dn", "g5", "g6", "g6e", "gr6", "p5")


def gpu_instance(instance_type: str) -> bool:
    """``ml.g*`` and ``ml.p*`` instances carry NVIDIA GPUs (``ml.inf*``/``ml.trn*`` are Neuron, not CUDA)."""
    family = instance_type.removeprefix("ml.").split(".")[0]
    return family[:1] in ("g", "p")


def gpus(instance_type: str) -> int | None:
    """NVIDIA GPUs per instance: 0 on a CPU instance, ``None`` for a GPU type this table does not know."""
    if not gpu_instance(instance_type):
        return 0
    name = instance_type.removeprefix("ml.")
    if name in MULTI_GPU:
        return MULTI_GPU[name]
    return 1 if name.split(".")[0] in SINGLE_GPU_FAMILIES else None


def processes(instance_type: str, count: int) -> int | None:
    """Training processes of one job (``None`` when the GPUs per instance are not known here)."""
    per_instance = gpus(instance_type)
    return None if per_instance is None else count * max(per_instance, 1)


def launcher(instance_type: str, count: int) -> bool:
    """Whether the job runs under torchrun: more than one process, or a GPU type whose GPUs only the
    container can count (torchrun then starts one process per GPU it finds)."""
    return count > 1 or gpus(instance_type) != 1 and gpu_instance(instance_type)
