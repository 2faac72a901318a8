#!/usr/bin/env python
"""A JumpReLU SAE on ViT-B/16 (Hugging Face ViTForImageClassification), trained on images.

ViT's weights are not bundled: save them once with save_pretrained on a
machine with internet access and pass the directory (docs/recipes/vit_base.md).
Captures resid_post.6 (every token: CLS and the 196 patches) over a folder of
images but every tenth batch, which is held out; trains a JumpReLU SAE (6,144
latents, its sparsity coefficient adapted to reach L0 = 32), splices it back to
measure top-1 agreement with the clean classifier and KL over its logits, and
ablates the latents that carry a concept given by two image folders (default:
synthetic red vs blue shapes); the target is the logit of the class the clean
model gives the positives.

  python recipes/vit_base.py --model-dir models/vit --images ~/data/imagenet-val-1k
  python recipes/vit_base.py --model-dir models/vit --images DIR \\
      --concept-positive DIR_DOGS --concept-negative DIR_CATS --concept-name dogs
  python recipes/vit_base.py --tiny          # random-init small model on synthetic shapes, seconds
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator, Sequence
from typing import Any

import torch

from sae_hooks.cli_args import fail, recipe_parser, train_config
from sae_hooks.data import ImageBatches, InputBatch, image_batches
from sae_hooks.eval import class_logit, run_model
from sae_hooks.models import load_model
from sae_hooks.pipeline import Concept, run_dir_for, run_pipeline

DEFAULTS = {
    "architecture": "jumprelu",
    "nb_concepts": 6144,
    "target_l0": 32,
    "batch_size": 4096,
    "total_tokens": 2_000_000,
    "log_every": 25,
    "checkpoint_every": 100,
}
TINY = {**DEFAULTS, "nb_concepts": 256, "target_l0": 8, "batch_size": 256, "total_tokens": 15_000}
POINT, TINY_POINT = "resid_post.6", "resid_post.2"  # the middle block of 12 (real) or 4 (tiny)
RED, BLUE = (220, 30, 30), (30, 60, 220)
HELD_OUT_EVERY = 10  # every tenth batch is held out for evaluation


def parse(argv: list[str] | None) -> argparse.Namespace:
    p = recipe_parser(__doc__, "a local ViT directory saved with save_pretrained", DEFAULTS)
    p.add_argument("--images", help="folder of training images (--tiny: synthetic shapes)")
    p.add_argument("--concept-positive", help="folder of images showing the concept")
    p.add_argument("--concept-negative", help="folder of images without it")
    p.add_argument("--concept-name", help="the concept's name (default: 'red' for the shapes)")
    p.add_argument("--point", help=f"hook point (default {POINT}; {TINY_POINT} with --tiny)")
    p.add_argument(
        "--vit-tokens", default="all", choices=("all", "cls", "patches"), help="tokens to keep"
    )
    return p.parse_args(argv)


def shapes(
    n: int, size: int, colors: Sequence[tuple[int, int, int]], seed: int = 0
) -> torch.Tensor:
    """(n, 3, size, size) uint8: one filled square or disc on a grey background per image.

    Colour i % len(colors), jittered; position, size and shape are random.
    """
    gen = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(size), torch.arange(size), indexing="ij")
    images = torch.empty(n, 3, size, size, dtype=torch.uint8)
    for i in range(n):
        r = size * (0.15 + 0.2 * torch.rand((), generator=gen).item())
        cy, cx = (r + (size - 2 * r) * torch.rand(2, generator=gen)).tolist()
        if i % 2:
            inside = (yy - cy) ** 2 + (xx - cx) ** 2 <= r**2
        else:
            inside = ((yy - cy).abs() <= r) & ((xx - cx).abs() <= r)
        grey = 90 + 120 * torch.rand((), generator=gen).item()
        color = torch.tensor(colors[i % len(colors)], dtype=torch.float32)
        color = (color + 20 * torch.randn(3, generator=gen)).clamp(0, 255)
        image = torch.full((3, size, size), grey)
        image[:, inside] = color[:, None]
        images[i] = image.round().to(torch.uint8)
    return images


def palette(n: int) -> list[tuple[int, int, int]]:
    """n saturated colours evenly spaced around the hue circle."""
    out = []
    for i in range(n):
        h = 6 * i / n
        x = 1 - abs(h % 2 - 1)
        rgb = [(1, x, 0), (x, 1, 0), (0, 1, x), (0, x, 1), (x, 0, 1), (1, 0, x)][int(h)]
        out.append(tuple(round(220 * c + 20) for c in rgb))
    return out


class KeptBatches:
    """The batches of an image source but the held-out ones; resumable like the source."""

    def __init__(self, images: ImageBatches, held: set[int]) -> None:
        self.images = images
        self.kept = [i for i in range(len(images)) if i not in held]
        self.description = f"{images.description}, every {HELD_OUT_EVERY}th batch held out"

    def __iter__(self) -> Iterator[InputBatch]:
        return self.iter_from(0)

    def iter_from(self, batch: int) -> Iterator[InputBatch]:
        for i in self.kept[batch:]:
            yield next(self.images.iter_from(i))


def split(images: ImageBatches, max_eval: int) -> tuple[KeptBatches, list[InputBatch]]:
    """Training batches, and the first `max_eval` of every tenth batch for evaluation."""
    n = len(images)
    if n < 2:
        raise ValueError(
            f"{images.description}: need at least 2 batches (one is held out for evaluation); "
            "add images or lower --capture-batch-size"
        )
    held = list(range(HELD_OUT_EVERY - 1, n, HELD_OUT_EVERY)) or [n - 1]
    return KeptBatches(images, set(held)), [next(images.iter_from(i)) for i in held[:max_eval]]


def image_concept(
    model: Any,
    name: str,
    positive: list[InputBatch],
    negative: list[InputBatch],
    *,
    n_random: int = 8,
) -> Concept:
    """The concept's target: the logit of the class the clean model gives the positives."""
    with torch.no_grad():
        logits = torch.cat([run_model(model, b) for b in positive])
    label = int(logits.float().mean(0).argmax())
    label_name = model.config.id2label.get(label, str(label))
    return Concept(
        name=name,
        positive=positive,
        negative=negative,
        target=class_logit(label),
        target_name=f"logit of class {label} ({label_name!r}), the positives' clean top class",
        n_random=n_random,
    )


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    device = args.device or "cpu"
    defaults, point = (TINY, TINY_POINT) if args.tiny else (DEFAULTS, POINT)
    given = (args.concept_positive is not None) + (args.concept_negative is not None)
    if given == 1:
        fail("give both --concept-positive and --concept-negative, or neither (red vs blue shapes)")
    if not args.tiny and args.images is None:
        fail("--images DIR is required: a folder of training images (--tiny runs without one)")
    try:
        config = train_config(args, defaults)
        model, processor = load_model("vit", args.model_dir, tiny=args.tiny, device=device)
        size = model.config.image_size
        norm = {
            "mean": getattr(processor, "image_mean", None) or (0.5, 0.5, 0.5),
            "std": getattr(processor, "image_std", None) or (0.5, 0.5, 0.5),
        }
        bs = args.capture_batch_size
        if args.images is None:  # --tiny: synthetic shapes in 12 colours
            source = shapes(320, size, palette(12), seed=1)
            images = image_batches(source, image_size=size, batch_size=bs, **norm)
        else:
            images = image_batches(args.images, image_size=size, batch_size=bs, processor=processor)
        data, eval_data = split(images, args.eval_batches or (2 if args.tiny else 8))
        n_concept = 16 if args.tiny else 32
        if given:
            pos, neg = (
                image_batches(d, image_size=size, batch_size=16, processor=processor)
                for d in (args.concept_positive, args.concept_negative)
            )
        else:
            pos, neg = (
                image_batches(
                    shapes(n_concept, size, [c], seed=2), image_size=size, batch_size=16, **norm
                )
                for c in (RED, BLUE)
            )
    except (FileNotFoundError, ValueError) as e:
        fail(str(e))
    concept = image_concept(
        model,
        args.concept_name or ("concept" if given else "red"),
        [b.to(device) for b in pos],
        [b.to(device) for b in neg],
        n_random=4 if args.tiny else 8,
    )

    result = run_pipeline(
        model,
        args.point or point,
        data,
        [b.to(device) for b in eval_data],
        config,
        run_dir_for(args.run_name or ("vit_base_tiny" if args.tiny else "vit_base"), args.cache),
        concept=concept,
        max_rows=args.max_rows,
        model_name="tiny-vit" if args.tiny else "google/vit-base-patch16-224",
        source=images.description if args.images else "320 synthetic shapes",
        vit_tokens=args.vit_tokens,
        report=not args.no_report,
        progress=not args.quiet,
    )
    print()
    print(result.summary())


if __name__ == "__main__":
    main()
