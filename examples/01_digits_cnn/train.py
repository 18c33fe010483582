"""Train the digits CNN (a few seconds on one core) and write weights.pt and sample.npy.

    python examples/01_digits_cnn/train.py
"""

from pathlib import Path

import numpy as np
import torch

from data import heldout, train
from model import WEIGHTS, DigitsCNN

HERE = Path(__file__).parent


def main(epochs: int = 12) -> float:
    torch.manual_seed(0)
    torch.set_num_threads(1)
    x, y = (torch.from_numpy(a) for a in train())
    model = DigitsCNN()
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    for _ in range(epochs):
        model.train()
        for idx in torch.randperm(len(x)).split(64):
            opt.zero_grad()
            torch.nn.functional.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
    model.eval()
    inputs, labels = heldout()
    with torch.no_grad():
        accuracy = (model(torch.from_numpy(inputs["x"])).argmax(1).numpy() == labels).mean()
    torch.save(model.state_dict(), WEIGHTS)
    np.save(HERE / "sample.npy", inputs["x"][:1])
    print(f"held-out accuracy {accuracy:.4f}; wrote {WEIGHTS.name} and sample.npy")
    return float(accuracy)


if __name__ == "__main__":
    main()
