"""leantrain's methods in a Lightning Trainer (``pip install 'leantrain[lightning]'``).

    python examples/lightning_example.py --epochs 2 --ckpt-dir ckpts
    python examples/lightning_example.py --epochs 2 --ckpt-dir ckpts2 --resume "ckpts/epoch=0-step=16.ckpt"

The only leantrain line is the `LeanTrain` callback (marked `# leantrain`): it hooks Learn&Drop
and DCP onto the module's optimizer, keeps their state in Lightning's checkpoints and rebuilds the
shrunk network on resume before the weights load. A resumed fit ends with the same weights as an
uninterrupted one (a test checks it).
"""

from __future__ import annotations

import argparse

import lightning as L
import torch
import torch.nn.functional as F
from lightning.pytorch.callbacks import ModelCheckpoint
from torch.utils.data import DataLoader, TensorDataset

import leantrain
from leantrain.data import load_dataset
from leantrain.lightning import LeanTrain


class Classifier(L.LightningModule):
    """A plain LightningModule around a leantrain model."""

    def __init__(self, model: str = "test_resnet", lr: float = 0.05) -> None:
        super().__init__()
        self.net = leantrain.create_model(model, num_classes=10, in_channels=1, input_size=28)
        self.lr = lr

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], index: int) -> torch.Tensor:
        x, y = batch
        return F.cross_entropy(self(x), y)

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.SGD(self.parameters(), lr=self.lr, momentum=0.9, weight_decay=5e-4)


def batches(train_subset: int, batch_size: int = 64) -> DataLoader:
    """The MNIST sample shipped with leantrain, normalised, in a fixed order."""
    train, _, _ = load_dataset("mnist-sample", train_subset=train_subset, test_subset=100)
    x = (train.images.float() / 255 - 0.1307) / 0.3081
    return DataLoader(TensorDataset(x, train.labels), batch_size=batch_size, shuffle=False)


def main(argv: list[str] | None = None) -> Classifier:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--train-subset", type=int, default=1024)
    parser.add_argument("--ckpt-dir", default="lightning-checkpoints")
    parser.add_argument("--resume", default=None, help="a checkpoint written by an earlier run")
    args = parser.parse_args(argv)

    torch.manual_seed(0)
    module = Classifier()
    # a demo that cuts within seconds: drop any block past its own peak change (the paper's
    # normalisation) and settling, checked every 2 steps from the first
    methods = [leantrain.LearnDrop(tau=1.0, warmup=0.0, stop=1.0, every_steps=2,
                                   normalize="self"),
               leantrain.DCP(p=0.5, warmup=0.1)]
    trainer = L.Trainer(
        max_epochs=args.epochs, accelerator="cpu", devices=1, logger=False,
        enable_progress_bar=False, enable_model_summary=False,
        callbacks=[
            LeanTrain(methods, module="net"),  # leantrain
            ModelCheckpoint(dirpath=args.ckpt_dir, save_top_k=-1, every_n_epochs=1),
        ],
    )
    trainer.fit(module, batches(args.train_subset), ckpt_path=args.resume)
    print(f"{leantrain.count_params(module.net):,} parameters left after "
          f"{len(getattr(module.net, 'surgery_log', []))} cuts")
    return module


if __name__ == "__main__":
    main()
