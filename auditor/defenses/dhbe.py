"""DHBE (Yan et al., AsiaCCS 2023): erase a backdoor with no clean data, by restricted adversarial
distillation.

The delivered model is the teacher (frozen); the student starts as a copy of it. Two generators are
trained against the student: an image generator that seeks inputs on which student and teacher
disagree (so the student learns the teacher's clean behaviour everywhere the generator can reach),
and a patch generator that seeks a small patch which, pasted onto those images, changes the
student's output (a backdoor is the easiest way to do that). The student minimises its distance to
the teacher plus the change the patch makes; it never sees a real image.

Losses, architecture and optimiser follow the authors' code as recorded in `seeds/METHODS.md`.
What this tool changes, each measured on the BadNets fixture (docs/benchmarks.md, "DHBE"):
- the student's batch-norm statistics stay frozen (eval mode): they are the only record of the real
  data the model carries, and a CPU budget is a few hundred iterations, too few to re-estimate them
  on synthetic images;
- the student's learning rate is 1e-3 and the patch term weighs 1.0 (the paper: 0.1 and 0.1, for a
  student trained 15,000 iterations): at 0.01 the copy lost 9-16 points of clean accuracy in
  100-150 iterations;
- the image generator's loss also asks for balanced classes (DAFL's information-entropy term): without
  it the generator collapsed onto two classes and the real trigger pasted on its images sent 2.5% of
  them to the target, with it 99%: the student cannot unlearn a trigger its images never fire;
- one generated batch serves all of an iteration's student steps (the authors draw one per step:
  the generator's forward pass costs more than a small model's);
- each image gets its patch at its own place (the authors: one random place per batch), half drawn
  uniformly and half where patches have changed the student most (`PatchPlaces`): a trigger bound
  to one corner is then found within 100 iterations;
- the budget is an iteration count, or seconds: the learning-rate schedule (×0.1 at 60% and 80%) is
  laid over the iterations the time allows, measured on the first iterations.

What it achieves on CPU budgets is in docs/benchmarks.md: the patch search finds the trigger's
place, but the student, which only ever sees generated images, keeps most of the backdoor on real
ones. It is not a default.
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass

import torch
import torch.nn.functional as F
from torch import nn

from ..registry import DEFENSES
from ..scans.neural_cleanse import _freeze, _restore
from .base import DefenseOutcome


@dataclass(frozen=True)
class DHBEParams:
    iterations: int = 400
    seconds: float = 0.0  # a time budget; 0: none (the iteration count alone)
    batch_size: int = 128
    student_steps: int = 5  # student updates per generator update
    student_lr: float = 1e-3
    generator_lr: float = 1e-3
    backdoor_weight: float = 1.0  # of |S(x_p) - S(x)|_1 in the student's loss
    tv_weight: float = 1e-4
    patch_size: int = 0  # 0: 5 pixels at 32 (the paper's), scaled with the image side
    latent_dim: int = 256
    balance_weight: float = 1.0  # of the class-imbalance of the teacher's predictions, in the generator's loss

    def __post_init__(self):
        if self.iterations < 1 or self.batch_size < 2 or self.student_steps < 1 or self.seconds < 0:
            raise ValueError("dhbe: iterations, student_steps >= 1, batch_size >= 2, seconds >= 0")
        if self.student_lr <= 0 or self.generator_lr <= 0 or self.backdoor_weight < 0 or self.patch_size < 0:
            raise ValueError("dhbe: learning rates must be positive, backdoor_weight and patch_size >= 0")

    def patch_side(self, height: int, width: int) -> int:
        side = self.patch_size or max(5, round(5 * min(height, width) / 32))
        return min(side, height, width)


class ImageGenerator(nn.Module):
    """z -> an image in the model's normalised input space (the authors' DFAD-style generator)."""

    def __init__(self, latent_dim: int, channels: int, height: int, width: int):
        super().__init__()
        self.h0, self.w0 = math.ceil(height / 4), math.ceil(width / 4)
        self.height, self.width = height, width
        self.project = nn.Sequential(nn.Linear(latent_dim, 128 * self.h0 * self.w0))
        self.body = nn.Sequential(
            nn.BatchNorm2d(128),
            nn.Upsample(scale_factor=2), nn.Conv2d(128, 128, 3, padding=1), nn.BatchNorm2d(128), nn.LeakyReLU(0.2),
            nn.Upsample(scale_factor=2), nn.Conv2d(128, 64, 3, padding=1), nn.BatchNorm2d(64), nn.LeakyReLU(0.2),
            nn.Conv2d(64, channels, 3, padding=1), nn.Tanh(), nn.BatchNorm2d(channels, affine=False),
        )

    def forward(self, z):
        out = self.body(self.project(z).view(len(z), 128, self.h0, self.w0))
        return out[:, :, : self.height, : self.width]


class PatchGenerator(nn.Module):
    """z -> a side×side patch in [-1, 1]."""

    def __init__(self, latent_dim: int, channels: int, side: int):
        super().__init__()
        self.side = side
        self.project = nn.Linear(latent_dim, 64 * side * side)
        self.body = nn.Sequential(nn.BatchNorm2d(64), nn.Conv2d(64, channels, 3, padding=1),
                                  nn.BatchNorm2d(channels, affine=False), nn.Tanh())

    def forward(self, z):
        return self.body(self.project(z).view(len(z), 64, self.side, self.side))


def _pixel_scale(handle) -> tuple[torch.Tensor, torch.Tensor]:
    """Where a unit-variance generated image lands in the model's pixel input: the stated
    normalisation; with none stated (identity), mid-grey ± a quarter of the [0, 1] range."""
    mean, std = handle._mean.cpu(), handle._std.cpu()
    if not handle.normalisation_stated:
        return torch.full_like(mean, 0.5), torch.full_like(std, 0.25)
    return mean, std


class PatchPlaces:
    """Where patches go: half of them uniformly over every position, half by how much a patch there has
    changed the student lately (a softmax over a running mean per position). A trigger bound to one
    place (a corner square) is hit by one uniform draw in hundreds; once the patch generator makes a
    patch that works there, that position is drawn far more often, for it and for the student."""

    def __init__(self, height: int, width: int, side: int, device):
        self.rows, self.cols = height - side + 1, width - side + 1
        self.side, self.width, self.device = side, width, device
        self.score = torch.zeros(self.rows * self.cols)
        self.seen = torch.zeros(self.rows * self.cols)

    def draw(self, n: int, gen: torch.Generator) -> torch.Tensor:
        uniform = torch.randint(0, len(self.score), (n,), generator=gen)
        if not self.seen.any():
            return uniform
        known = self.score[self.seen > 0]
        spread = float(known.std()) if len(known) > 1 else 0.0
        logits = torch.where(self.seen > 0, self.score, known.mean()) / max(spread, 1e-6)
        guided = torch.multinomial(torch.softmax(logits, 0), n, replacement=True, generator=gen)
        return torch.where(torch.rand(n, generator=gen) < 0.5, uniform, guided)

    def record(self, places: torch.Tensor, change: torch.Tensor) -> None:
        sums = torch.zeros_like(self.score).index_add_(0, places, change.detach().cpu())
        counts = torch.zeros_like(self.score).index_add_(0, places, torch.ones(len(places)))
        hit = counts > 0
        fresh = hit & (self.seen == 0)
        self.score[fresh] = sums[fresh] / counts[fresh]
        again = hit & ~fresh
        self.score[again] = 0.7 * self.score[again] + 0.3 * sums[again] / counts[again]
        self.seen += counts

    def best(self) -> tuple[int, int]:
        i = int(torch.argmax(torch.where(self.seen > 0, self.score, torch.tensor(-1e9))))
        return divmod(i, self.cols)

    def paste(self, x: torch.Tensor, patches: torch.Tensor, places: torch.Tensor) -> torch.Tensor:
        """Add each image's patch (pixel units) at its place."""
        n, _, height, width = x.shape
        top, left = (places // self.cols).to(x.device), (places % self.cols).to(x.device)
        offsets = torch.arange(self.side, device=x.device)
        rows = (top[:, None] + offsets)[:, :, None]  # n, side, 1
        cols = (left[:, None] + offsets)[:, None, :]  # n, 1, side
        index = (torch.arange(n, device=x.device)[:, None, None], rows, cols)
        canvas = torch.zeros(n, height, width, x.shape[1], dtype=x.dtype, device=x.device)
        return x + canvas.index_put(index, patches.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


def _total_variation(x: torch.Tensor) -> torch.Tensor:
    return ((x[..., 1:, :] - x[..., :-1, :]) ** 2).mean() + ((x[..., :, 1:] - x[..., :, :-1]) ** 2).mean()


def _imbalance(logits: torch.Tensor) -> torch.Tensor:
    """1 - the normalised entropy of the teacher's mean prediction over a batch: 0 when every class is
    predicted equally often, 1 when one class takes all."""
    mean = torch.softmax(logits, 1).mean(0)
    return 1 + (mean * torch.log(mean.clamp_min(1e-12))).sum() / math.log(len(mean))


def _l1(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return (a - b).abs().mean()


@DEFENSES.register(
    "dhbe",
    "DHBE data-free distillation: a student learns the delivered model's clean behaviour on generated images "
    "while a patch generator hunts for what changes it; uses no clean samples and no trigger",
    params=asdict(DHBEParams()), params_type=DHBEParams,
    limits=("Uses no clean samples (the repair step after it does, when there are any). Its patch generator "
            "searches small additive patches: image-wide triggers (blended, stripes, warps) are erased only as far "
            "as distillation on generated images forgets them. A CPU budget is a few hundred iterations, the paper's "
            "GPU budget 15,000."),
    quick={"iterations": 2, "batch_size": 8, "student_steps": 1}, invalid={"iterations": 0},
)
def dhbe(handle, fit, triggers, params: dict, seed: int, progress=None) -> DefenseOutcome:
    p = DHBEParams(**params)
    start = time.perf_counter()
    device = handle.device
    channels, height, width = handle.input_shape
    side = p.patch_side(height, width)
    mean, std = (t.to(device) for t in _pixel_scale(handle))

    teacher = handle.module
    student = handle.copy_for_editing()
    for q in student.parameters():
        q.requires_grad_(True)
    student_handle = handle.derived(student)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        generator = ImageGenerator(p.latent_dim, channels, height, width).to(device)
        patcher = PatchGenerator(p.latent_dim, channels, side).to(device)
    gen = torch.Generator().manual_seed(seed)
    places = PatchPlaces(height, width, side, device)
    student.eval()
    teacher_was_training = teacher.training
    teacher.eval()
    saved_grad = _freeze(teacher)

    opt_s = torch.optim.SGD(student.parameters(), lr=p.student_lr, momentum=0.9, weight_decay=5e-4)
    opt_g = torch.optim.Adam(generator.parameters(), lr=p.generator_lr)
    opt_p = torch.optim.Adam(patcher.parameters(), lr=p.generator_lr)
    optimisers = (opt_s, opt_g, opt_p)

    def images(z):  # pixel space, the handle normalises
        return mean + std * generator(z)

    total, done, stats = p.iterations, 0, {}
    try:
        while done < total:
            if p.seconds and done == 3:  # lay the schedule over what the time budget allows
                per_iteration = (time.perf_counter() - start) / done
                total = max(done + 1, min(p.iterations, int(p.seconds / per_iteration)))
            scale = 1.0 if done < 0.6 * total else 0.1 if done < 0.8 * total else 0.01
            for opt, base in zip(optimisers, (p.student_lr, p.generator_lr, p.generator_lr)):
                for group in opt.param_groups:
                    group["lr"] = base * scale
            with torch.no_grad():  # one generated batch for all student steps, each with new patches
                x = images(torch.randn(p.batch_size, p.latent_dim, generator=gen).to(device))
                t_out = handle.forward(x)
            for _ in range(p.student_steps):
                z2 = torch.randn(p.batch_size, p.latent_dim, generator=gen).to(device)
                with torch.no_grad():
                    x_p = places.paste(x, patcher(z2), places.draw(p.batch_size, gen))
                s_out = student_handle.forward(x)
                distill = _l1(s_out, t_out)
                backdoor = _l1(student_handle.forward(x_p), s_out.detach())
                opt_s.zero_grad(set_to_none=True)
                (distill + p.backdoor_weight * backdoor).backward()
                opt_s.step()
            z = torch.randn(p.batch_size, p.latent_dim, generator=gen).to(device)
            x = images(z)
            t_gen = handle.forward(x)
            gap = _l1(student_handle.forward(x), t_gen)
            loss_g = -gap + p.tv_weight * _total_variation(x)
            if p.balance_weight:
                loss_g = loss_g + p.balance_weight * _imbalance(t_gen)
            opt_g.zero_grad(set_to_none=True)
            loss_g.backward()
            opt_g.step()
            z2 = torch.randn(p.batch_size, p.latent_dim, generator=gen).to(device)
            x = x.detach()
            with torch.no_grad():
                s_clean = student_handle.forward(x)
            where = places.draw(p.batch_size, gen)
            per_image = (student_handle.forward(places.paste(x, patcher(z2), where)) - s_clean).abs().mean(1)
            places.record(where, per_image)
            change = per_image.mean()
            opt_p.zero_grad(set_to_none=True)
            (-change).backward()
            opt_p.step()
            done += 1
            stats = {"distillation_l1": distill.item(), "backdoor_l1": backdoor.item(), "generator_gap": gap.item(),
                     "patch_change": change.item()}
            if progress and (done % 25 == 0 or done == total):
                elapsed = time.perf_counter() - start
                progress(f"dhbe: iteration {done}/{total}, student-teacher L1 {stats['distillation_l1']:.3f}, "
                         f"patch change {stats['patch_change']:.3f} (most at {places.best()}), {elapsed:.0f}s (about "
                         f"{elapsed / done * (total - done):.0f}s left)")
    finally:
        _restore(teacher, saved_grad)
        teacher.train(teacher_was_training)
    student.eval()
    seconds = time.perf_counter() - start
    return DefenseOutcome(student_handle, "dhbe", seconds, 0, {
        "params": asdict(p), "iterations": done, "patch_side": side, "patch_place": list(places.best()),
        "synthesized_images": done * p.batch_size * 2, **stats})
