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

from sae_hooks.concepts import top_class_concept
from sae_hooks.data import image_batches
from sae_hooks.data.splits import split_batches
from sae_hooks.data.synthetic_images import BLUE, RED, palette, shape_batches
from sae_hooks.pipeline import run_pipeline
from sae_hooks.recipe import (
    eval_batch_count,
    fail,
    print_summary,
    recipe_corpus,
    recipe_model,
    recipe_parser,
    recipe_record,
    recipe_run_dir,
    run_recipe,
    train_config,
    user_errors,
)

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
    args = p.parse_args(argv)
    if (args.concept_positive is None) != (args.concept_negative is None):
        fail("give both --concept-positive and --concept-negative, or neither (red vs blue shapes)")
    if not args.tiny and args.images is None:
        fail("--images DIR is required: a folder of training images (--tiny runs without one)")
    return args


def main(argv: list[str] | None = None) -> None:
    args = parse(argv)
    device = args.device or "cpu"
    given = args.concept_positive is not None
    with user_errors():
        config = train_config(args, TINY if args.tiny else DEFAULTS)
        loaded = recipe_model(args, "vit")
        model, processor = loaded.model, loaded.processor
        size, bs = model.config.image_size, args.capture_batch_size
        shaped = {"image_size": size, "processor": processor}  # normalised like real images
        if args.images is None:  # --tiny: synthetic shapes in 12 colours
            images = shape_batches(320, palette(12), batch_size=bs, seed=1, **shaped)
        else:
            images = image_batches(args.images, image_size=size, batch_size=bs, processor=processor)
        data, eval_data = split_batches(images, eval_batch_count(args))
        if given:
            pos, neg = (
                image_batches(d, image_size=size, batch_size=16, processor=processor)
                for d in (args.concept_positive, args.concept_negative)
            )
        else:
            n = 16 if args.tiny else 32
            pos, neg = (shape_batches(n, [c], batch_size=16, seed=2, **shaped) for c in (RED, BLUE))
    concept = top_class_concept(
        model,
        args.concept_name or ("concept" if given else "red"),
        [b.to(device) for b in pos],
        [b.to(device) for b in neg],
        n_random=4 if args.tiny else 8,
    )

    point = args.point or (TINY_POINT if args.tiny else POINT)
    corpus = recipe_corpus(args.images or "synthetic shapes")
    default_name = "tiny-vit" if args.tiny else "google/vit-base-patch16-224"
    result = run_pipeline(
        model,
        point,
        data,
        [b.to(device) for b in eval_data],
        config,
        recipe_run_dir(args, "vit_base"),
        concept=concept,
        max_rows=args.max_rows,
        model_name=loaded.identity.get("name_or_path") or default_name,
        source=images.description if args.images else "320 synthetic shapes",
        vit_tokens=args.vit_tokens,
        report=not args.no_report,
        progress=not args.quiet,
        corpus=corpus,
        record=recipe_record(loaded, point, corpus),
        images=images,  # the dashboard draws each example's patches over its image
    )
    print_summary(result)


if __name__ == "__main__":
    run_recipe(main)
