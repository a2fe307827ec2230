"""Study 000's framework on the same work: a Keras 3 (TensorFlow backend) U-Net of the paper's shape.

Run by bench/bench_engines.py with the Python of a separate virtual environment that has ``tensorflow-cpu``
and ``keras`` (never slidemap's: TensorFlow and torch do not share one environment here), e.g.
``python3 -m venv /work/keras-venv && /work/keras-venv/bin/pip install tensorflow-cpu keras``. Prints one
JSON line: training chips/s (128 px, batch 16, Adam + BCE, fp32, channels-last as Keras is) and the
network-only inference rate of one pass over a 1,024² x bands tile (study 000 fed its 1,024² test areas in
one pass) and over 4 x 512² tiles, in Mpx/s.

The network (Soares et al. 2020, as slidemap.nn.models.unet): four blocks of two 3x3 conv + ReLU with 2x2
max-pooling, a bottleneck of 16x filters, four decoder blocks of a 2x2 transposed convolution, concatenation
and two 3x3 conv + ReLU, a 1x1 conv with sigmoid.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import time


def unet(bands: int, filters: int):
    import keras
    from keras import layers

    inp = keras.Input((None, None, bands))
    x, skips = inp, []
    for level in range(4):
        f = filters * 2**level
        x = layers.Conv2D(f, 3, padding="same", activation="relu")(x)
        x = layers.Conv2D(f, 3, padding="same", activation="relu")(x)
        skips.append(x)
        x = layers.MaxPooling2D(2)(x)
    f = filters * 16
    x = layers.Conv2D(f, 3, padding="same", activation="relu")(x)
    x = layers.Conv2D(f, 3, padding="same", activation="relu")(x)
    for level in reversed(range(4)):
        f = filters * 2**level
        x = layers.Conv2DTranspose(f, 2, strides=2)(x)
        x = layers.Concatenate()([x, skips[level]])
        x = layers.Conv2D(f, 3, padding="same", activation="relu")(x)
        x = layers.Conv2D(f, 3, padding="same", activation="relu")(x)
    out = layers.Conv2D(1, 1, activation="sigmoid")(x)
    return keras.Model(inp, out)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--bands", type=int, default=6)
    ap.add_argument("--filters", type=int, default=16)
    ap.add_argument("--size", type=int, default=128)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--steps", type=int, default=6, help="timed training steps (after 2 warm-up steps)")
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--skip-train", action="store_true")
    ap.add_argument("--serve", action="store_true", help="read commands (train, infer1024, infer4x512, "
                    "quit) from stdin, answer each with its seconds (interleaving Keras with our runs)")
    args = ap.parse_args()
    import numpy as np
    import tensorflow as tf

    tf.config.threading.set_intra_op_parallelism_threads(args.threads)
    tf.config.threading.set_inter_op_parallelism_threads(1)
    import keras

    keras.utils.set_random_seed(0)
    model = unet(args.bands, args.filters)
    rng = np.random.default_rng(0)
    out = {"framework": f"keras {keras.__version__} / tensorflow {tf.__version__}", "threads": args.threads,
           "python": platform.python_version()}
    if args.serve:
        serve(model, args)
        return
    if not args.skip_train:
        model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy", jit_compile=False)
        x = rng.standard_normal((args.batch, args.size, args.size, args.bands), dtype=np.float32)
        y = (rng.random((args.batch, args.size, args.size, 1)) > 0.9).astype(np.float32)
        for _ in range(2):
            model.train_on_batch(x, y)
        times = []
        for _ in range(args.steps):
            t0 = time.perf_counter()
            model.train_on_batch(x, y)
            times.append(time.perf_counter() - t0)
        out["train_chips_per_s"] = args.batch / sorted(times)[len(times) // 2]
    infer = tf.function(lambda t: model(t, training=False), reduce_retracing=True)
    shapes = (("one_pass_1024", (1, 1024, 1024, args.bands)), ("tiles_4x512", (4, 512, 512, args.bands)))
    for name, shape in shapes:
        x = tf.constant(rng.standard_normal(shape, dtype=np.float32))
        infer(x).numpy()
        times = []
        for _ in range(3):
            t0 = time.perf_counter()
            infer(x).numpy()
            times.append(time.perf_counter() - t0)
        out[f"infer_{name}_mpx_per_s"] = shape[0] * shape[1] * shape[2] / 1e6 / sorted(times)[1]
    print(json.dumps(out))


def serve(model, args) -> None:
    """One timed call per command line, after one untimed call of each kind (warm-up)."""
    import sys

    import keras
    import numpy as np
    import tensorflow as tf

    rng = np.random.default_rng(0)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="binary_crossentropy", jit_compile=False)
    x = rng.standard_normal((args.batch, args.size, args.size, args.bands), dtype=np.float32)
    y = (rng.random((args.batch, args.size, args.size, 1)) > 0.9).astype(np.float32)
    infer = tf.function(lambda t: model(t, training=False), reduce_retracing=True)
    inputs = {"infer1024": tf.constant(rng.standard_normal((1, 1024, 1024, args.bands), dtype=np.float32)),
              "infer4x512": tf.constant(rng.standard_normal((4, 512, 512, args.bands), dtype=np.float32))}
    calls = {"train": lambda: model.train_on_batch(x, y),
             "infer1024": lambda: infer(inputs["infer1024"]).numpy(),
             "infer4x512": lambda: infer(inputs["infer4x512"]).numpy()}
    for fn in calls.values():
        fn()
    framework = f"keras {keras.__version__} / tensorflow {tf.__version__}"
    print(json.dumps({"ready": True, "framework": framework}), flush=True)
    for line in sys.stdin:
        cmd = line.strip()
        if cmd == "quit" or cmd not in calls:
            break
        t0 = time.perf_counter()
        calls[cmd]()
        print(time.perf_counter() - t0, flush=True)


if __name__ == "__main__":
    main()
