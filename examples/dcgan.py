"""Train a small DCGAN on synthetic images, with fabric: two models, two optimizers, one loop.

The "dataset" is generated here (nothing is downloaded): 16x16 grey images, each a bright Gaussian blob of random
size at a random place on a dark background. The generator learns to turn noise into such blobs; the
discriminator learns to tell them from real ones. At the end the script compares simple statistics of real and
generated images (mean brightness, how much of the image is lit, how peaked the brightest pixel is).

Run on one process:                 python examples/dcgan.py
Run on 2 CPU processes with DDP:    fabric run --accelerator cpu --devices 2 examples/dcgan.py
Short run (for CI):                 add --fast

Rank zero saves a grid of generated images as a PNG after every epoch, beside the metrics (CSV and TensorBoard)
under ``--log-dir``, and a PNG of the loss curves at the end (``pip install -r examples/requirements.txt``).
"""

from __future__ import annotations

import argparse
import time

import torch
from _pictures import finish, make_loggers, picture_path, save_image_grid
from torch import nn
from torch.nn.functional import binary_cross_entropy_with_logits
from torch.utils.data import DataLoader, TensorDataset

from fabric_core import Fabric

SIZE = 16
LATENT = 32


def blob_images(count: int, seed: int) -> torch.Tensor:
    """``count`` images in [-1, 1] of shape (1, SIZE, SIZE), each one Gaussian blob (the same on every process)."""
    generator = torch.Generator().manual_seed(seed)
    centres = torch.rand(count, 2, generator=generator) * (SIZE - 6) + 3
    widths = torch.rand(count, 1, 1, generator=generator) * 1.5 + 1.5
    grid = torch.arange(SIZE, dtype=torch.float32)
    dy = (grid.view(1, SIZE, 1) - centres[:, 0].view(-1, 1, 1)) ** 2
    dx = (grid.view(1, 1, SIZE) - centres[:, 1].view(-1, 1, 1)) ** 2
    images = torch.exp(-(dx + dy) / (2 * widths**2))
    return (images * 2 - 1).unsqueeze(1)


class Generator(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.project = nn.Sequential(nn.Linear(LATENT, 64 * 4 * 4), nn.BatchNorm1d(64 * 4 * 4), nn.ReLU())
        self.upsample = nn.Sequential(
            nn.ConvTranspose2d(64, 32, 4, stride=2, padding=1),  # 8x8
            nn.BatchNorm2d(32),
            nn.ReLU(),
            nn.ConvTranspose2d(32, 1, 4, stride=2, padding=1),  # 16x16
            nn.Tanh(),
        )

    def forward(self, noise: torch.Tensor) -> torch.Tensor:
        return self.upsample(self.project(noise).view(-1, 64, 4, 4))


class Discriminator(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(1, 32, 4, stride=2, padding=1),  # 8x8
            nn.LeakyReLU(0.2),
            nn.Conv2d(32, 64, 4, stride=2, padding=1),  # 4x4
            nn.LeakyReLU(0.2),
            nn.Flatten(),
            nn.Linear(64 * 4 * 4, 1),
        )

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net(images).squeeze(1)


def image_statistics(images: torch.Tensor) -> torch.Tensor:
    """Mean brightness, fraction of lit pixels and peak brightness, averaged over the images (in [0, 1] units)."""
    pixels = (images.flatten(1) + 1) / 2
    return torch.stack([pixels.mean(), (pixels > 0.5).float().mean(), pixels.max(dim=1).values.mean()])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--fast", action="store_true", help="a short run (well under a minute)")
    parser.add_argument("--epochs", type=int, default=None)
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--lr", type=float, default=2e-4)
    parser.add_argument("--log-dir", default="fabric_logs", help="metrics (CSV, TensorBoard) and pictures go here")
    args = parser.parse_args()
    epochs = args.epochs or (6 if args.fast else 30)
    samples = 1024 if args.fast else 4096

    csv_logger, tensorboard = make_loggers(args.log_dir, "dcgan")
    fabric = Fabric(loggers=[csv_logger, tensorboard])
    fabric.launch()
    fabric.seed_everything(1234)

    loader = DataLoader(
        TensorDataset(blob_images(samples, seed=0)), batch_size=args.batch_size, shuffle=True, drop_last=True
    )
    loader = fabric.setup_dataloaders(loader)
    generator, discriminator = Generator(), Discriminator()
    betas = (0.5, 0.999)
    optimizer_g = torch.optim.Adam(generator.parameters(), lr=args.lr * 5, betas=betas)
    optimizer_d = torch.optim.Adam(discriminator.parameters(), lr=args.lr, betas=betas)
    # each model with its own optimizer; fabric wraps both for the strategy (DDP here)
    generator, optimizer_g = fabric.setup(generator, optimizer_g)
    discriminator, optimizer_d = fabric.setup(discriminator, optimizer_d)

    fabric.print(f"Training a DCGAN on {fabric.world_size} process(es): {samples} blob images, {epochs} epochs")
    start = time.perf_counter()
    fixed_noise = torch.randn(64, LATENT, generator=torch.Generator().manual_seed(5)).to(fabric.device)
    step = 0
    for epoch in fabric.progress(range(epochs), desc="epochs"):
        totals = torch.zeros(3, device=fabric.device)
        for (real,) in fabric.progress(loader, desc=f"epoch {epoch + 1}"):
            batch = real.size(0)
            noise = torch.randn(batch, LATENT, device=fabric.device)
            fake = generator(noise)

            # discriminator step: real images are labelled 1, generated ones 0 (one forward over both)
            logits = discriminator(torch.cat([real, fake.detach()]))
            labels = torch.cat([torch.ones(batch, device=fabric.device), torch.zeros(batch, device=fabric.device)])
            loss_d = binary_cross_entropy_with_logits(logits, labels)
            optimizer_d.zero_grad()
            fabric.backward(loss_d, model=discriminator)
            optimizer_d.step()

            # generator step: make the discriminator call the generated images real
            loss_g = binary_cross_entropy_with_logits(discriminator(fake), torch.ones(batch, device=fabric.device))
            optimizer_g.zero_grad()
            fabric.backward(loss_g, model=generator)
            optimizer_g.step()
            totals += torch.stack([loss_d.detach(), loss_g.detach(), torch.tensor(1.0, device=fabric.device)])
            step += 1
            fabric.log_dict({"discriminator_loss": loss_d.detach(), "generator_loss": loss_g.detach()}, step=step)

        totals = fabric.all_reduce(totals, reduce_op="sum")
        fabric.print(
            f"epoch {epoch + 1}/{epochs}: discriminator loss {(totals[0] / totals[2]).item():.3f}, generator loss"
            f" {(totals[1] / totals[2]).item():.3f} ({time.perf_counter() - start:.1f}s)"
        )
        # the same noise every epoch, so the grids show the generator learning; every process runs the forward (DDP
        # may synchronise buffers in it), rank zero writes the picture
        generator.eval()
        with torch.no_grad():
            samples = generator(fixed_noise).cpu().numpy()
        generator.train()
        if fabric.is_global_zero:
            save_image_grid(samples, picture_path(csv_logger, f"samples_epoch_{epoch + 1:03d}.png"))

    generator.eval()
    with torch.no_grad():
        generated = generator(torch.randn(512, LATENT, device=fabric.device))
    real_stats = image_statistics(blob_images(512, seed=99).to(fabric.device))
    fake_stats = fabric.all_reduce(image_statistics(generated), reduce_op="mean")
    gap = (real_stats - fake_stats).abs().max().item()
    fabric.print(
        "real vs generated: mean brightness {:.3f}/{:.3f}, lit fraction {:.3f}/{:.3f}, peak {:.3f}/{:.3f}".format(
            *torch.stack([real_stats, fake_stats], dim=1).flatten().tolist()
        )
    )
    finish(fabric, csv_logger, [["discriminator_loss", "generator_loss"]], "DCGAN")
    if fabric.is_global_zero:
        print(
            f"final: discriminator loss {(totals[0] / totals[2]).item():.3f}, generator loss"
            f" {(totals[1] / totals[2]).item():.3f}, largest statistics gap {gap:.3f}"
        )


if __name__ == "__main__":
    main()
