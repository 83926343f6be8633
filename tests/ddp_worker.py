"""Run under ``torchrun --nproc_per_node 2``: train on a data slice with DDP and
save this rank's final weights to OUT/rank<r>.slim."""

import os
import sys

import torch

import torchslim as ts
from torchslim.data import DataConfig, make_loaders
from torchslim.export.slim import write_slim
from torchslim.train import TrainConfig, fit, init_distributed


def main(data_dir: str, out: str) -> None:
    torch.set_num_threads(1)
    assert init_distributed()
    rank = torch.distributed.get_rank()
    torch.manual_seed(rank)  # different inits per rank: DDP must broadcast rank 0's weights
    model = ts.create_model("vgg_small", width=8)
    loaders = make_loaders(
        DataConfig(dir=data_dir, subset=400, val_size=80, batch_size=40, augment=True), distributed=True
    )
    fit(model, loaders.train, TrainConfig(epochs=2, lr=0.05), progress=False)
    write_slim(os.path.join(out, f"rank{rank}.slim"), model.state_dict(), {"arch": None})
    torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2])
