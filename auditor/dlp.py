"""DLP (Ying & Wu, 2023): train a model on an untrusted labelled data set so that it carries no backdoor,
and name the samples that were planted. Three stages (../shared/seeds/METHODS.md, "DLP"):

1. Supervised learning on everything, recording every sample's loss at fixed points (the trajectory).
   Planted samples are learned differently from clean ones: dirty-label samples start with a high loss
   (their content says another class) and then fall below almost every clean sample once the
   trigger is learned. The isolation score is that fall, `log loss(end) - log loss(early peak)`, as a
   robust z-score against all samples and against the sample's own label (the lower of the two);
   suspects are those below -`isolation_z`. The share isolated is therefore set by the data, not
   fixed: a clean set yields few suspects, a poisoned one as many as stand out.
2. Active unlearning: gradient ascent on the suspects, descent on the samples learned most slowly
   (the least likely planted), until the model no longer fits the suspects' labels. Once the
   trigger is unlearned, planted samples the first isolation missed contradict the model too: their
   loss jumps. Samples whose loss rose by a robust outlier are added to the suspects (second
   isolation).
3. Semi-supervised fine-tuning (FixMatch-style): the suspects lose their labels; labelled batches come
   from the rest, unlabelled ones from the suspects, pseudo-labelled from a weakly augmented view
   when the model is confident and learned on a strongly augmented view.

Deterministic on CPU for a fixed seed (one generator per stage, no data-loader workers).
"""

from __future__ import annotations

import math
import time
from dataclasses import asdict, dataclass, field

import torch
import torch.nn.functional as F
from torch import nn

from .data import ImageSet


@dataclass(frozen=True)
class DLPParams:
    epochs: int = 6  # in all: stage 1 plus stage 3
    supervised_epochs: int = 2  # stage 1
    recordings_per_epoch: int = 4  # whole-set loss recordings in stage 1 (the trajectory)
    isolation_z: float = 3.0  # robust z below which a learning-speed score is suspect
    rise_z: float = 2.0  # robust z above which a loss rise after unlearning is suspect
    contradiction_confidence: float = 0.0  # ... and the unlearned model gives another class at least this probability
    skip_confidence: float = 0.9  # stage 3 leaves out a labelled sample the model gives another class this probability
    unlearn_steps: int = 300
    unlearn_lr: float = 5e-4
    unlearn_stop_accuracy: float = 0.1  # unlearning stops once the suspects' labels are fitted this little
    unlearn_rounds: int = 4  # unlearn, re-isolate by loss rise, repeat until few samples are added
    converged_share: float = 0.002  # a round adding at most this share of the set ends stage 2
    confidence: float = 0.95  # FixMatch pseudo-label threshold
    unlabelled_weight: float = 1.0
    batch_size: int = 128
    lr: float = 1e-3

    def __post_init__(self):
        if self.epochs < 1 or not 1 <= self.supervised_epochs < self.epochs + 1:
            raise ValueError("epochs must be >= 1 and supervised_epochs in 1..epochs")
        if self.recordings_per_epoch < 2:
            raise ValueError("recordings_per_epoch must be at least 2")


@dataclass
class DLPResult:
    model: nn.Module
    suspects: torch.Tensor  # indices into the training set, after both isolations
    named: torch.Tensor  # suspects whose given label the final model confidently rejects: the planted samples named
    scores: torch.Tensor  # stage-1 isolation score per sample, robust z (below -isolation_z: suspect)
    trajectory: torch.Tensor  # K x N losses recorded in stage 1
    recorded_at: list[float]  # epochs at which each row of the trajectory was recorded
    stats: dict = field(default_factory=dict)


def _robust_z(values: torch.Tensor, reference: torch.Tensor | None = None) -> torch.Tensor:
    """(values - median) / (1.4826 x MAD), both taken from `reference` (default: the values themselves)."""
    ref = values if reference is None else reference
    med = ref.median()
    mad = (ref - med).abs().median() * 1.4826
    return (values - med) / max(float(mad), 1e-6)


@torch.no_grad()
def _losses(model, forward, x, y, batch_size=2048) -> torch.Tensor:
    model.eval()
    out = torch.cat([F.cross_entropy(forward(x[i : i + batch_size]), y[i : i + batch_size], reduction="none")
                     for i in range(0, len(y), batch_size)])
    model.train()
    return out


@torch.no_grad()
def _probabilities(model, forward, x, batch_size=2048) -> torch.Tensor:
    model.eval()
    out = torch.cat([forward(x[i : i + batch_size]).softmax(1) for i in range(0, len(x), batch_size)])
    model.train()
    return out


def weak_view(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """A random shift of up to 1/8 of the side, edges replicated."""
    n, _, h, w = x.shape
    s = max(1, min(h, w) // 8)
    padded = F.pad(x, (s, s, s, s), mode="replicate")
    dy, dx = torch.randint(0, 2 * s + 1, (2,), generator=gen).tolist()
    return padded[:, :, dy : dy + h, dx : dx + w]


def strong_view(x: torch.Tensor, gen: torch.Generator) -> torch.Tensor:
    """Weak view, then per-image contrast and brightness jitter, noise and a cut-out square (half the side)."""
    x = weak_view(x, gen)
    n, c, h, w = x.shape
    dev = x.device  # random numbers come from the CPU generator, so a GPU run draws the same ones
    contrast = (0.5 + torch.rand(n, 1, 1, 1, generator=gen)).to(dev)
    bright = ((torch.rand(n, 1, 1, 1, generator=gen) - 0.5) * 0.4).to(dev)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    x = ((x - mean) * contrast + mean + bright + torch.randn(x.shape, generator=gen).to(dev) * 0.05).clamp(0, 1)
    side = max(1, min(h, w) // 2)
    top = torch.randint(0, h - side + 1, (n,), generator=gen)
    left = torch.randint(0, w - side + 1, (n,), generator=gen)
    rows = torch.arange(h).view(1, h, 1)
    cols = torch.arange(w).view(1, 1, w)
    cut = ((rows >= top.view(n, 1, 1)) & (rows < (top + side).view(n, 1, 1))
           & (cols >= left.view(n, 1, 1)) & (cols < (left + side).view(n, 1, 1)))
    return x.masked_fill(cut.unsqueeze(1).to(dev), 0.5)


def isolation_scores(trajectory: torch.Tensor, labels: torch.Tensor, num_classes: int, cut: float = 3.0) -> torch.Tensor:
    """Per sample, in robust standard deviations (negative = learned suspiciously fast): the lower of two
    z-scores of the fall `log loss(end) - max log loss(first half of stage 1)`.

    - against all samples: catches planted samples wherever they sit, including a label made mostly of
      them (BadNets at 20%: the target label's own median is a planted sample);
    - against its own label, centred on the median of that label's samples the first z did not already
      single out (`cut`): an easy class as a whole is not suspect, while a few planted samples hidden
      in a hard label stand out against their label even when they do not against everything."""
    logs = trajectory.clamp_min(1e-8).log()
    early = logs[: max(1, len(logs) // 2)].max(0).values
    fall = logs[-1] - early
    overall = _robust_z(fall)
    unremarkable = overall >= -cut
    centred = fall.clone()
    for c in range(num_classes):
        sel = labels == c
        if not sel.any():
            continue
        ref = sel & unremarkable
        centred[sel] = fall[sel] - fall[ref if ref.sum() >= max(1, int(sel.sum()) // 10) else sel].median()
    return torch.minimum(overall, _robust_z(centred))


def _label_z(values: torch.Tensor, labels: torch.Tensor, reference: torch.Tensor, num_classes: int) -> torch.Tensor:
    """Robust z of each value against the `reference` samples of its own label. Unlearning a target
    label's planted samples raises the loss of that label's clean samples too; measured against all
    samples that collateral rise looked like an outlier and took a whole class's labels away (BadNets
    5%: a class at 0.2% accuracy). Against its own label only a planted sample stands out."""
    z = torch.zeros_like(values)
    for c in range(num_classes):
        sel = labels == c
        if int((sel & reference).sum()) >= 2:
            z[sel] = _robust_z(values[sel], values[sel & reference])
    return z


def _unlearn(model, forward, x, y, bad, trusted, num_classes, params: DLPParams, gen) -> tuple[int, float]:
    """Ascent on `bad`, descent on `trusted`, until `bad`'s labels are fitted at most
    `unlearn_stop_accuracy` or the step budget ends. Returns (steps, share of `bad` still fitted)."""
    opt = torch.optim.Adam(model.parameters(), lr=params.unlearn_lr)
    half = max(1, params.batch_size // 2)
    fit, step = 1.0, 0
    for step in range(1, params.unlearn_steps + 1):
        b = bad[torch.randint(len(bad), (min(half, len(bad)),), generator=gen)]
        t = trusted[torch.randint(len(trusted), (half,), generator=gen)]
        ascent = F.cross_entropy(forward(x[b]), y[b])
        descent = F.cross_entropy(forward(x[t]), y[t])
        # bounded: -log of a near-zero probability grows without limit and would swamp the descent
        loss = descent - ascent.clamp(max=math.log(num_classes) * 2)
        opt.zero_grad()
        loss.backward()
        opt.step()
        if step % 25 == 0:
            fit = float((_probabilities(model, forward, x[bad]).argmax(1) == y[bad]).float().mean())
            if fit <= params.unlearn_stop_accuracy:
                break
    return step, fit


def train_dlp(model: nn.Module, data: ImageSet, num_classes: int, forward, params: DLPParams = DLPParams(),
              seed: int = 0, progress=None) -> DLPResult:
    """`forward(x)` runs `model` on pixel-space images (normalisation included). Trains `model` in place."""
    say = progress or (lambda message: None)
    x, y = data.x, data.y
    n = len(y)
    torch.manual_seed(seed)
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=params.lr)
    steps_per_epoch = math.ceil(n / params.batch_size)
    record_every = max(1, steps_per_epoch // params.recordings_per_epoch)
    stats: dict = {"params": asdict(params), "samples": n}

    # Stage 1: supervised learning with the loss trajectory recorded.
    start = time.time()
    model.train()
    trajectory, recorded_at, step = [], [], 0
    for epoch in range(params.supervised_epochs):
        order = torch.randperm(n, generator=gen)
        for i in range(0, n, params.batch_size):
            idx = order[i : i + params.batch_size]
            loss = F.cross_entropy(forward(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
            step += 1
            if step % record_every == 0 or step == params.supervised_epochs * steps_per_epoch:
                trajectory.append(_losses(model, forward, x, y))
                recorded_at.append(round(step / steps_per_epoch, 3))
        say(f"dlp stage 1 (supervised) epoch {epoch + 1}/{params.supervised_epochs}: loss {loss.item():.3f}")
    trajectory = torch.stack(trajectory)
    scores = isolation_scores(trajectory, y, num_classes, params.isolation_z)
    first = scores < -params.isolation_z
    stats["isolation_threshold"] = -params.isolation_z
    stats["stage1_seconds"] = round(time.time() - start, 1)
    stats["isolated_stage1"] = int(first.sum())
    say(f"dlp isolation: {int(first.sum())} of {n} samples learned suspiciously fast (robust z < -{params.isolation_z})")

    # Stage 2: active unlearning on the suspects, descent on the slowest-learned half; repeated while
    # unlearning makes more samples contradict the model (the planted ones the first isolation missed).
    start = time.time()
    before = trajectory[-1].clamp_min(1e-8).log()
    suspects = first.clone()
    trusted = (~first & (scores >= scores.median())).nonzero().flatten()
    stats["unlearn_rounds"] = []
    for round_ in range(params.unlearn_rounds if first.any() else 0):
        steps, fit = _unlearn(model, forward, x, y, suspects.nonzero().flatten(), trusted, num_classes, params, gen)
        probs = _probabilities(model, forward, x)
        rise = F.nll_loss(probs.clamp_min(1e-8).log(), y, reduction="none").log() - before
        contradicted = (probs.max(1).values >= params.contradiction_confidence) & (probs.argmax(1) != y)
        new = (_label_z(rise, y, ~suspects, num_classes) > params.rise_z) & contradicted & ~suspects
        suspects |= new
        stats["unlearn_rounds"].append({"steps": steps, "suspects_fit": round(fit, 4), "added": int(new.sum())})
        say(f"dlp unlearning round {round_ + 1}: {steps} steps, the suspects' labels now fit {fit:.0%}; "
            f"{int(new.sum())} more samples contradict the model (loss rise, robust z > {params.rise_z})")
        if new.sum() <= params.converged_share * n:
            break
    stats["isolated_stage2"] = int((suspects & ~first).sum())
    stats["stage2_seconds"] = round(time.time() - start, 1)

    # Stage 3: semi-supervised fine-tuning, the suspects unlabelled.
    start = time.time()
    labelled = (~suspects).nonzero().flatten()
    unlabelled = suspects.nonzero().flatten()
    epochs3 = params.epochs - params.supervised_epochs
    steps3 = epochs3 * math.ceil(len(labelled) / params.batch_size)
    opt3 = torch.optim.Adam(model.parameters(), lr=params.lr)
    sched = torch.optim.lr_scheduler.CosineAnnealingLR(opt3, max(1, steps3))
    model.train()
    pseudo_used = skipped = 0
    for epoch in range(epochs3):
        order = labelled[torch.randperm(len(labelled), generator=gen)]
        for i in range(0, len(order), params.batch_size):
            idx = order[i : i + params.batch_size]
            logits = forward(weak_view(x[idx], gen))
            # a labelled sample the model contradicts with confidence is left out of this step: a planted
            # sample both isolations missed stays contradicted once the trigger is unlearned, so it
            # never teaches the trigger back
            probs = logits.detach().softmax(1)
            held = (probs.argmax(1) != y[idx]) & (probs.max(1).values >= params.skip_confidence)
            skipped += int(held.sum())
            loss = F.cross_entropy(logits[~held], y[idx][~held], reduction="sum") / len(idx)
            if len(unlabelled):
                u = unlabelled[torch.randint(len(unlabelled), (len(idx),), generator=gen)]
                with torch.no_grad():
                    probs = forward(weak_view(x[u], gen)).softmax(1)
                conf, pseudo = probs.max(1)
                # a pseudo-label equal to the dropped label would teach a planted sample's trigger back
                keep = (conf >= params.confidence) & (pseudo != y[u])
                if keep.any():
                    pseudo_used += int(keep.sum())
                    strong = forward(strong_view(x[u][keep], gen))
                    loss = loss + params.unlabelled_weight * F.cross_entropy(strong, pseudo[keep], reduction="sum") / len(u)
            opt3.zero_grad()
            loss.backward()
            opt3.step()
            sched.step()
        say(f"dlp stage 3 (semi-supervised) epoch {epoch + 1}/{epochs3}: loss {loss.item():.3f}")
    stats["stage3_seconds"] = round(time.time() - start, 1)
    stats["pseudo_labels_used"] = pseudo_used
    stats["contradicted_labels_skipped"] = skipped
    model.eval()

    probs = _probabilities(model, forward, x[unlabelled]) if len(unlabelled) else torch.zeros(0, num_classes)
    conf, pred = probs.max(1) if len(unlabelled) else (torch.zeros(0), torch.zeros(0, dtype=torch.long))
    named = unlabelled[(pred != y[unlabelled]) & (conf >= 0.5)]
    stats["suspects"] = int(len(unlabelled))
    stats["named"] = int(len(named))
    return DLPResult(model, unlabelled, named, scores, trajectory, recorded_at, stats)
