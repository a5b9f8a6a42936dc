"""One trial as the course project's ``hpo.py`` runs it, for the tuning benchmark's reference.

A fresh interpreter per trial (each was its own SageMaker training job), ImageFolder with the
transforms applied on every read, a ResNet-18 whose frozen backbone still runs forward on every
image of every epoch, validation after each epoch, the test split at the end, then the state dict
saved. Written plainly, as the course wrote it.
"""

from __future__ import annotations

import argparse
import time

started = time.perf_counter()

import torch  # noqa: E402 - the import is part of what a trial costs
from torch import nn  # noqa: E402
from torchvision import datasets, models, transforms  # noqa: E402


def loader(root: str, split: str, size: int, shuffle: bool) -> torch.utils.data.DataLoader:
    tf = transforms.Compose(
        [
            transforms.Resize(int(size * 256 / 224)),
            transforms.CenterCrop(size),
            transforms.ToTensor(),
            transforms.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225]),
        ]
    )
    return torch.utils.data.DataLoader(
        datasets.ImageFolder(f"{root}/{split}", transform=tf), batch_size=32, shuffle=shuffle
    )


def test(model: nn.Module, batches: torch.utils.data.DataLoader) -> float:
    model.eval()
    correct = seen = 0
    with torch.no_grad():
        for x, y in batches:
            correct += (model(x).argmax(1) == y).sum().item()
            seen += len(y)
    return correct / seen


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--data", required=True, help="a dataset with train/valid/test/<class>/ folders")
    parser.add_argument("--epochs", type=int, default=3, help="epochs")
    parser.add_argument("--lr", type=float, default=1e-3, help="learning rate")
    parser.add_argument("--size", type=int, default=64, help="image side in pixels")
    parser.add_argument("--out", required=True, help="where to save the state dict")
    args = parser.parse_args()
    train, valid, held_out = (loader(args.data, s, args.size, s == "train") for s in ("train", "valid", "test"))
    model = models.resnet18(weights=None)
    for p in model.parameters():
        p.requires_grad = False
    model.fc = nn.Linear(model.fc.in_features, len(train.dataset.classes))
    optimizer = torch.optim.Adam(model.fc.parameters(), lr=args.lr)
    loss_fn = nn.CrossEntropyLoss()
    for epoch in range(args.epochs):
        model.train()
        for x, y in train:
            optimizer.zero_grad()
            loss_fn(model(x), y).backward()
            optimizer.step()
        print(f"epoch {epoch}: valid accuracy {test(model, valid):.3f}", flush=True)
    print(f"test accuracy {test(model, held_out):.3f}; {time.perf_counter() - started:.1f}s", flush=True)
    torch.save(model.state_dict(), args.out)


if __name__ == "__main__":
    main()
