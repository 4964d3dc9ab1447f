"""GPU check of the study CNN's training step under float32 vs mixed precision, backend-agnostic.

scripts/device_check.sh runs the full TensorFlow trainer (input pipeline included) and is the
check to use wherever TensorFlow 2.17 with CUDA 12 is installed. This script measures the
model part alone through Keras 3 on whatever backend the machine has (JAX, PyTorch or
TensorFlow), on device-resident random batches, for machines where TensorFlow is not
available. Prints images/s per precision policy and the mixed/float32 ratio.

    KERAS_BACKEND=jax python scripts/gpu_model_check.py --steps 50 --batch_sizes 32,256
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def measure(policy: str, batch_size: int, steps: int, image_size: int, jit: bool) -> float:
    import keras
    import numpy as np

    from trainer.cnn.models import build_study_cnn

    keras.mixed_precision.set_global_policy(policy)
    keras.utils.set_random_seed(0)
    model = build_study_cnn(image_size=image_size)
    model.compile(optimizer=keras.optimizers.RMSprop(1e-4), loss="binary_crossentropy",
                  jit_compile=jit)
    rng = np.random.default_rng(0)
    x = rng.random((batch_size, image_size, image_size, 3), dtype=np.float32)
    y = rng.integers(0, 2, (batch_size, 1)).astype(np.float32)
    for _ in range(5):  # compile and warm up
        model.train_on_batch(x, y)
    start = time.perf_counter()
    for _ in range(steps):
        loss = model.train_on_batch(x, y)
    float(np.asarray(loss).ravel()[0])  # wait for the device
    return steps * batch_size / (time.perf_counter() - start)


def main() -> int:
    p = argparse.ArgumentParser(prog="python scripts/gpu_model_check.py",
                                description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--steps", type=int, default=50, help="timed training steps per setting")
    p.add_argument("--batch_sizes", default="32,256", help="comma list of batch sizes")
    p.add_argument("--image_size", type=int, default=256, help="square input side")
    args = p.parse_args()
    import keras

    print(f"keras {keras.__version__} backend {keras.backend.backend()}", flush=True)
    results = []
    for batch in (int(b) for b in args.batch_sizes.split(",")):
        rates = {}
        for policy, jit in (("float32", True), ("mixed_float16", True), ("mixed_bfloat16", True),
                            ("float32", False), ("mixed_float16", False)):
            try:
                rates[(policy, jit)] = measure(policy, batch, args.steps, args.image_size, jit)
            except Exception as e:  # a backend without non-jit mode, say: report, go on
                print(f"batch {batch} {policy} jit={jit}: failed: {type(e).__name__}: {e}")
                continue
            print(f"batch {batch:4d} {policy:<15} jit={jit!s:<5} "
                  f"{rates[(policy, jit)]:10.1f} images/s", flush=True)
        base = rates.get(("float32", True))
        for key, rate in rates.items():
            results.append({"batch": batch, "policy": key[0], "jit": key[1],
                            "images_per_s": rate,
                            "ratio_to_float32_jit": rate / base if base else None})
        if base and ("mixed_float16", True) in rates:
            print(f"batch {batch}: mixed_float16 / float32 = "
                  f"{rates[('mixed_float16', True)] / base:.2f}x (goal >= 2)", flush=True)
    out = os.environ.get("OUT")
    if out:
        with open(os.path.join(out, "gpu_model_check.json"), "w") as f:
            json.dump(results, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
