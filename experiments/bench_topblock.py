"""Benchmark the split model: TopBlockHead epochs on cached maps vs the whole backbone per epoch.

Prints, in one run, on generated images with random-init weights (ImageNet weights cannot be
downloaded here, and they do not change the speed):

(0) the one-off cost: ``extract_features(..., split="default")`` of the N images into a fresh
    store (decode + the backbone up to the split + float16 commits);
(a) cached: :class:`~catdog_features.heads.TopBlockHead` trained on those maps (in memory, as
    a FeatureSet holds them): the top block + GAP + Dropout + Dense, forward and backward;
(b) uncached: the same trainable top block and head behind the frozen lower backbone, trained
    on the decoded images (already in memory, preprocessed each step): every epoch runs the
    whole backbone forward;

each as seconds per epoch, wall and CPU time (process, all threads), measured side by side
with the same batch size, optimizer and trainable layers; then the ratio (b)/(a) and after how
many epochs the extraction has paid for itself. Epoch times exclude model building and
tracing: (a) is the mean of ``TopBlockHead.epoch_seconds_`` over the E epochs after the
first of ``fit(epochs=1 + E)``; (b) times E epochs after one warm-up epoch.

Usage::

    python experiments/bench_topblock.py --quick            # 32 images, 64 px, 2 epochs (a minute)
    python experiments/bench_topblock.py --n 128 --image-size 224 --epochs 3
    python experiments/bench_topblock.py --backbone Xception --image-size 150
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")

import numpy as np

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--quick", action="store_true", help="32 images at 64 px, 2 epochs, batch 16")
    parser.add_argument("--backbone", default="ResNet50", help="a backbone with a default split (default: %(default)s)")
    parser.add_argument("--n", type=int, default=128, help="generated images (default: %(default)s)")
    parser.add_argument("--image-size", type=int, default=224, help="input size (default: %(default)s)")
    parser.add_argument("--epochs", type=int, default=3, help="timed epochs per variant (default: %(default)s)")
    parser.add_argument("--batch-size", type=int, default=32, help="(default: %(default)s)")
    args = parser.parse_args(argv)
    if args.quick:
        args.n, args.image_size, args.epochs, args.batch_size = 32, 64, 2, 16
    return args


def timed(fn):
    w0, c0 = time.perf_counter(), time.process_time()
    out = fn()
    return out, time.perf_counter() - w0, time.process_time() - c0


def uncached_epoch_times(spec, images, labels, split, args, lr):
    """(wall, cpu) seconds per epoch of training the same top block + head on the images."""
    import keras
    import tensorflow as tf

    from catdog_features.features.mapper import build_model
    from catdog_features.features.split import build_top_block, spatial_model

    lower = spatial_model(build_model(spec, None, args.image_size), split, spec.name)
    lower.trainable = False
    block, _ = build_top_block(spec.name, None, args.image_size, split)
    for layer in block.layers[-1].layers:  # as TopBlockHead(train_layers="all", train_batchnorm=False)
        layer.trainable = bool(layer.weights) and not isinstance(layer, keras.layers.BatchNormalization)
    inputs = keras.Input((args.image_size, args.image_size, 3))
    x = block(lower(inputs, training=False))
    x = keras.layers.Dropout(0.5, seed=1)(x)
    model = keras.Model(inputs, keras.layers.Dense(1, kernel_initializer=keras.initializers.GlorotUniform(seed=2))(x))
    optimizer = keras.optimizers.Adam(learning_rate=lr)
    variables = model.trainable_variables

    @tf.function(autograph=False, reduce_retracing=True,
                 input_signature=[tf.TensorSpec((None, args.image_size, args.image_size, 3), tf.float32),
                                  tf.TensorSpec((None,), tf.float32)])
    def step(xb, yb):
        with tf.GradientTape() as tape:
            logits = model(spec.preprocess_input(xb), training=True)[:, 0]
            loss = tf.reduce_mean(tf.nn.sigmoid_cross_entropy_with_logits(labels=yb, logits=logits))
        optimizer.apply_gradients(zip(tape.gradient(loss, variables), variables))
        return loss

    rng = np.random.default_rng(0)

    def epoch():
        order = rng.permutation(len(images))
        for start in range(0, len(order), args.batch_size):
            rows = order[start:start + args.batch_size]
            step(tf.constant(images[rows], tf.float32), tf.constant(labels[rows].astype(np.float32)))

    epoch()  # warm-up: tracing, first allocations
    _, wall, cpu = timed(lambda: [epoch() for _ in range(args.epochs)])
    return wall / args.epochs, cpu / args.epochs


def main(argv=None) -> int:
    args = parse_args(argv)
    from catdog_features.features.backbones import get_backbone
    from catdog_features.features.extract import extract_with_report
    from catdog_features.features.reader import decode_image, resize_image
    from catdog_features.features.split import format_bytes, map_bytes
    from catdog_features.heads import TopBlockHead
    from catdog_features.synthetic import make_dataset

    spec = get_backbone(args.backbone)
    lr = 1e-4
    print(f"bench_topblock: {spec.name} split 'default' ({spec.default_split}), {args.n} generated images at "
          f"{args.image_size} px, batch {args.batch_size}, {args.epochs} timed epochs, random-init weights, "
          f"{os.cpu_count()} CPUs")
    with tempfile.TemporaryDirectory() as tmp:
        make_dataset(tmp, n_per_class=args.n // 2, n_test=0, layout="kaggle", size=max(64, args.image_size), seed=0)
        folder = Path(tmp) / "train"
        (fs, report), ext_wall, ext_cpu = timed(lambda: extract_with_report(
            folder, backbones=(spec.name,), cache_dir=Path(tmp) / "store", weights=None, image_size=args.image_size,
            batch_size=args.batch_size, progress=False, split="default"))
        maps, labels = fs[spec.name], fs.labels
        rep_pass = report.pass_seconds
        rep = report.backbones[spec.name]
        print(f"(0) extraction of the maps, once: {ext_wall:.1f}s wall, {ext_cpu:.1f}s CPU (model build "
              f"{rep.build_seconds:.1f}s); maps {' x '.join(map(str, maps.shape[1:]))} float16, "
              f"{format_bytes(map_bytes(len(maps), maps.shape[1:]))}")

        def fit(epochs):
            return TopBlockHead(spec.name, weights=None, image_size=args.image_size, epochs=epochs, lr=lr,
                                batch_size=args.batch_size, validation_split=0, random_state=0).fit(maps, labels)

        head, fit_wall, _ = timed(lambda: fit(1 + args.epochs))
        timed_epochs = np.asarray(head.epoch_seconds_[1:])  # the first epoch traces the step
        a_wall, a_cpu = timed_epochs.mean(axis=0)
        print(f"(a) TopBlockHead on cached maps:   {a_wall:8.3f}s wall  {a_cpu:8.3f}s CPU per epoch "
              f"({len(maps) / a_wall:.0f} img/s; the whole fit of {1 + args.epochs} epochs took {fit_wall:.1f}s "
              "with the model build)")

        images = np.stack([resize_image(decode_image(p, target_size=args.image_size), args.image_size)
                           for p in fs.paths]).astype(np.float32)
        b_wall, b_cpu = uncached_epoch_times(spec, images, labels, spec.default_split, args, lr)
        print(f"(b) whole backbone every epoch:    {b_wall:8.3f}s wall  {b_cpu:8.3f}s CPU per epoch "
              f"({len(images) / b_wall:.0f} img/s)")
    print(f"ratio (b)/(a): {b_wall / a_wall:.1f}x wall, {b_cpu / a_cpu:.1f}x CPU per epoch")
    if b_wall > a_wall:
        print(f"the extraction pass ({rep_pass:.1f}s without the model build) pays for itself after "
              f"{rep_pass / (b_wall - a_wall):.1f} epochs; with the build and TensorFlow's import "
              f"({ext_wall:.1f}s) after {ext_wall / (b_wall - a_wall):.1f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
