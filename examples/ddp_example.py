"""A method in your own DistributedDataParallel script (one process per core or GPU).

    torchrun --standalone --nproc-per-node 2 examples/ddp_example.py --method learndrop
    torchrun --standalone --nproc-per-node 2 examples/ddp_example.py --method dcp --out model.safetensors

The lines marked `# leantrain` are what a plain DDP loop needs: `attach` on the plain model
*before* wrapping it, `ShrinkingDDP` in place of `DistributedDataParallel` (DDP cannot follow
parameters that are cut out, so it is rebuilt after every cut), and `finish` at the end.
"""

from __future__ import annotations

import argparse

import torch
import torch.distributed as dist
import torch.nn.functional as F

import leantrain
from leantrain.data import TensorLoader, load_dataset
from leantrain.training.distributed import ShardedLoader, ShrinkingDDP, check_same_weights


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--method", choices=["learndrop", "dcp"], default="dcp")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--train-subset", type=int, default=1024)
    parser.add_argument("--out", default=None, help="save the final model (process 0)")
    args = parser.parse_args(argv)

    dist.init_process_group("gloo")  # "nccl" on GPUs (then also the device per LOCAL_RANK)
    rank, world = dist.get_rank(), dist.get_world_size()
    train, test, spec = load_dataset("mnist-sample", train_subset=args.train_subset, test_subset=500)
    torch.manual_seed(0)  # the same initial weights everywhere (DDP also broadcasts them)
    model = leantrain.create_model("test_resnet", num_classes=spec.num_classes,
                                   in_channels=spec.in_channels, input_size=spec.image_size)
    loader = TensorLoader(train, spec, batch_size=128, train=True, seed=0)
    shard = ShardedLoader(loader, rank, world)  # this process's part of every global batch
    opt = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9, weight_decay=5e-4)
    total = len(loader) * args.epochs

    # a demo that cuts within seconds: drop any block past its own peak change (the paper's
    # normalisation) and settling, checked every 2 steps from the first
    method = (leantrain.DCP(p=0.5, warmup=0.1) if args.method == "dcp"
              else leantrain.LearnDrop(tau=1.0, warmup=0.0, stop=1.0, every_steps=2,
                                       normalize="self"))
    handle = leantrain.attach(model, opt, method, total, steps_per_epoch=len(loader))  # leantrain
    net = ShrinkingDDP(model)  # leantrain: DistributedDataParallel, rebuilt after every cut

    for epoch in range(args.epochs):
        net.train()
        for x, y in shard.epoch(epoch):
            loss = F.cross_entropy(net(x), y)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            opt.step()
    handle.finish()  # leantrain

    check_same_weights(model)  # optional: every process ends with the same network
    if rank == 0:
        cuts = len(getattr(model, "surgery_log", []))
        _, acc = leantrain.evaluate(model, TensorLoader(test, spec, batch_size=500, train=False))
        print(f"{args.method} on {world} processes: test accuracy {100 * acc:.2f}%, "
              f"{leantrain.count_params(model):,} params, {cuts} cuts, "
              f"DDP built {net.rebuilds} times")
        if args.out:
            leantrain.save_model(model, args.out)
    # Tear down together: a process that destroys its gloo group while process 0 is still
    # evaluating can abort in gloo's shutdown ("terminate called without an active exception").
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
