"""Fine-tune pretrained weights with Learn&Drop in your own loop, on data that may arrive in chunks.

    python examples/finetune.py --init pretrained.pth                # a state dict, new head
    python examples/finetune.py --init pretrained.pth --stream 3     # data in 3 chunks

What `leantrain train --init FILE --head-lr-mult 10 --stream K` does, in plain PyTorch: load the
pretrained body with ``load_state_dict`` (the classifier for another number of classes keeps its
fresh initialisation), give the new head its own learning rate in a second param group (the
methods keep each parameter in its group across cuts), attach the method once for the whole
stream, and train each chunk as it arrives. A test checks it gives, bit for bit, the model
`leantrain train` gives for the same settings.
"""

from __future__ import annotations

import argparse

import torch
import torch.nn.functional as F

import leantrain
from leantrain.data import TensorLoader, load_dataset
from leantrain.data.stream import StreamLoader


def main(argv: list[str] | None = None) -> torch.nn.Module:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--init", required=True, help="pretrained state dict (.pt/.pth)")
    parser.add_argument("--model", default="resnet20")
    parser.add_argument("--epochs", type=int, default=3, help="epochs per chunk")
    parser.add_argument("--stream", type=int, default=1, help="chunks the data arrive in")
    parser.add_argument("--head-lr-mult", type=float, default=10.0)
    parser.add_argument("--train-subset", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default=None, help="save the final model (safetensors)")
    args = parser.parse_args(argv)

    train, test, spec = load_dataset("mnist-sample", train_subset=args.train_subset, test_subset=500)
    torch.manual_seed(args.seed)
    model = leantrain.create_model(args.model, num_classes=spec.num_classes,
                                   in_channels=spec.in_channels, input_size=spec.image_size)
    # The pretrained body: every tensor whose shape fits; the head (another number of classes)
    # keeps its fresh initialisation. weights_only=True: tensors only, never pickled code.
    state = torch.load(args.init, map_location="cpu", weights_only=True)
    own = model.state_dict()
    fits = {k: v for k, v in state.items() if k in own and v.shape == own[k].shape}
    model.load_state_dict(fits, strict=False)
    head = {k for k in own if k not in fits}
    model = model.to(memory_format=torch.channels_last)

    if args.stream > 1:  # chunk k trained for --epochs epochs, then chunk k + 1 arrives
        loader = StreamLoader(train, spec, batch_size=128, chunks=args.stream,
                              epochs_per_chunk=args.epochs, seed=args.seed, channels_last=True)
    else:
        loader = TensorLoader(train, spec, batch_size=128, train=True, seed=args.seed,
                              channels_last=True)
    named = list(model.named_parameters())
    opt = torch.optim.SGD([  # the body at lr, the new head at lr × --head-lr-mult
        {"params": [p for n, p in named if n not in head]},
        {"params": [p for n, p in named if n in head], "lr": 0.01 * args.head_lr_mult},
    ], lr=0.01, momentum=0.9, weight_decay=5e-4)
    epochs = args.epochs * args.stream
    method = leantrain.LearnDrop(tau=1.0, warmup=0.0, stop=1.0, every_steps=2, normalize="self")
    handle = leantrain.attach(model, opt, method, len(loader) * epochs,  # leantrain
                              steps_per_epoch=len(loader))

    test_loader = TensorLoader(test, spec, batch_size=500, train=False, channels_last=True)
    for epoch in range(epochs):
        model.train()
        for x, y in loader.epoch(epoch):
            loss = F.cross_entropy(model(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
        if (epoch + 1) % args.epochs == 0:  # a chunk has been learned: what does the model know?
            _, acc = leantrain.evaluate(model, test_loader)
            print(f"after chunk {(epoch + 1) // args.epochs}: test accuracy {100 * acc:.2f}%, "
                  f"{leantrain.count_params(model):,} params")
    handle.finish()  # leantrain
    if args.out:
        leantrain.save_model(model, args.out)
    return model


if __name__ == "__main__":
    main()
