"""Use a leantrain method inside your own training loop (the README shows this as a diff).

    python examples/own_loop.py --method learndrop   # or dcp
    python examples/own_loop.py --method dcp --epochs 2 --out model.safetensors

The two lines marked `# leantrain` are all a plain PyTorch loop needs: `attach` hooks the method
onto the optimizer's step, `finish` ends it. For the same seed this gives the same model as
`leantrain train` / `fit()` (a test checks it, bit for bit).
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

import leantrain
from leantrain.data import TensorLoader, load_dataset


def main(argv: list[str] | None = None) -> torch.nn.Module:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=["learndrop", "dcp"], default="dcp")
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--train-subset", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="save the final model (safetensors)")
    args = parser.parse_args(argv)

    train, test, spec = load_dataset("mnist-sample", train_subset=args.train_subset, test_subset=500)
    torch.manual_seed(args.seed)
    model = leantrain.create_model(args.model, num_classes=spec.num_classes,
                                   in_channels=spec.in_channels, input_size=spec.image_size)
    # channels_last, as `leantrain train` does by default: faster convolutions on CPU.
    model = model.to(memory_format=torch.channels_last)
    loader = TensorLoader(train, spec, batch_size=128, train=True, seed=args.seed,
                          channels_last=True)
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    total = len(loader) * args.epochs

    # a demo that cuts within seconds: drop any block past its own peak change (the paper's
    # normalisation) and settling, checked every 2 steps from the first
    method = (leantrain.DCP(p=0.5, warmup=0.1) if args.method == "dcp"
              else leantrain.LearnDrop(tau=1.0, warmup=0.0, stop=1.0, every_steps=2,
                                       normalize="self"))
    handle = leantrain.attach(model, opt, method, total, steps_per_epoch=len(loader))  # leantrain

    for epoch in range(args.epochs):
        model.train()
        for x, y in loader.epoch(epoch):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    handle.finish()  # leantrain: e.g. DCP's cut to the compact model

    model.eval()
    test_loader = TensorLoader(test, spec, batch_size=500, train=False, channels_last=True)
    _, acc = leantrain.evaluate(model, test_loader)
    print(f"{args.method}: test accuracy {100 * acc:.2f}%, {leantrain.count_params(model):,} params")
    if args.out:
        leantrain.save_model(model, args.out)
    return model


if __name__ == "__main__":
    main()
