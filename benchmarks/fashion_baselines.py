"""Baselines on the same Fashion-MNIST split and pixels as the diffusion classifiers: logistic regression and a
small CNN trained from scratch within a stated CPU budget. Writes benchmarks/results/fashion_baselines.json.

    python benchmarks/fashion_baselines.py --cnn_minutes 8    (one thread)
"""
from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from lib import CACHE, RESULTS, HelpFormatter
from lib.results import write_result

from diffusion_classifier.data.fashion_mnist import load_arrays


def logistic_regression(x_train, y_train, x_test, seed: int) -> tuple[np.ndarray, float]:
    """(test predictions, fit seconds) of multinomial logistic regression on pixels in [0, 1]."""
    from sklearn.linear_model import LogisticRegression

    start = time.process_time()
    clf = LogisticRegression(max_iter=300, random_state=seed)
    clf.fit(x_train.reshape(len(x_train), -1) / 255.0, y_train)
    return clf.predict(x_test.reshape(len(x_test), -1) / 255.0), time.process_time() - start


class SmallCNN(torch.nn.Module):
    """conv32-conv32-pool-conv64-conv64-pool-fc128-fc10 with batch norm (about 0.4M parameters)."""

    def __init__(self):
        super().__init__()
        c = torch.nn.Conv2d
        self.convs = torch.nn.ModuleList([c(1, 32, 3, padding=1), c(32, 32, 3, padding=1), c(32, 64, 3, padding=1),
                                          c(64, 64, 3, padding=1)])
        self.norms = torch.nn.ModuleList([torch.nn.BatchNorm2d(n) for n in (32, 32, 64, 64)])
        self.fc1, self.fc2 = torch.nn.Linear(64 * 7 * 7, 128), torch.nn.Linear(128, 10)
        self.drop = torch.nn.Dropout(0.3)

    def forward(self, x):
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            x = F.relu(norm(conv(x)))
            if i % 2 == 1:
                x = F.max_pool2d(x, 2)
        return self.fc2(self.drop(F.relu(self.fc1(x.flatten(1)))))


def small_cnn(x_train, y_train, x_test, minutes: float, seed: int, batch: int = 128) -> tuple[np.ndarray, dict]:
    """(test predictions, training facts) of SmallCNN trained by AdamW for `minutes` of CPU time, +-2 px shifts."""
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    x = torch.from_numpy(x_train).float().div(255.0)[:, None]
    y = torch.from_numpy(y_train)
    model = SmallCNN()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-4)
    budget, start, steps = 60 * minutes, time.process_time(), 0
    model.train()
    while time.process_time() - start < budget:
        idx = torch.randint(0, len(x), (batch,), generator=gen)
        xb = F.pad(x[idx], (2, 2, 2, 2))
        dx, dy = torch.randint(0, 5, (2,), generator=gen).tolist()
        xb = xb[:, :, dy:dy + 28, dx:dx + 28]  # one random translation per batch
        progress = min(1.0, (time.process_time() - start) / budget)
        for g in opt.param_groups:
            g["lr"] = 2e-3 * 0.5 * (1 + np.cos(np.pi * progress))
        loss = F.cross_entropy(model(xb), y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        steps += 1
    model.eval()
    with torch.no_grad():
        xt = torch.from_numpy(x_test).float().div(255.0)[:, None]
        preds = torch.cat([model(xt[i:i + 1000]).argmax(1) for i in range(0, len(xt), 1000)]).numpy()
    facts = {"steps": steps, "batch": batch, "cpu_seconds": time.process_time() - start,
             "epochs": steps * batch / len(x), "params": sum(p.numel() for p in model.parameters())}
    return preds, facts


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--cnn_minutes", type=float, default=10.0, help="CPU minutes of the CNN's training")
    p.add_argument("--seed", type=int, default=0, help="seed of the CNN's initialisation and batches")
    p.add_argument("--subset", type=Path, default=CACHE / "fashion" / "subset_test_10.npy",
                   help="also report accuracy on these test indices (the diffusion benchmarks' subset), if present")
    p.add_argument("--out", type=Path, default=RESULTS / "fashion_baselines.json", help="where the JSON goes")
    args = p.parse_args(argv)
    torch.set_num_threads(1)
    x_train, y_train = load_arrays("train")
    x_test, y_test = load_arrays("test")
    subset = np.load(args.subset) if args.subset.is_file() else None
    results = {}
    lr_preds, lr_sec = logistic_regression(x_train, y_train, x_test, args.seed)
    cnn_preds, cnn_facts = small_cnn(x_train, y_train, x_test, args.cnn_minutes, args.seed)
    for name, preds, facts in (("logistic regression", lr_preds, {"cpu_seconds": lr_sec}),
                               ("small CNN", cnn_preds, cnn_facts)):
        row = {"top1": 100.0 * float((preds == y_test).mean()), "n_images": len(y_test), **facts}
        if subset is not None:
            row["top1_subset"] = 100.0 * float((preds[subset] == y_test[subset]).mean())
            row["n_subset"] = len(subset)
        results[name] = row
        print(f"{name}: {row}", flush=True)
    write_result(args.out, results, __file__, argv)


if __name__ == "__main__":
    main()
