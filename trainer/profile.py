"""Read a run's profiler traces as TensorBoard's Profile tab does: one line per profile session
with its steps, mean step time, the input pipeline's share and the page's verdict.

    python -m trainer.profile --workdir=out/runs/cnn_tiny       (a run trained with
        --profile_steps=START,END; any folder holding *.xplane.pb files works)

--json prints every session's figures (trainer.core.profiling.step_summary) and the slowest
tf.data stage as JSON instead.
"""
from __future__ import annotations

import json
import os

from absl import flags

from trainer.core import program


def define_flags() -> None:
    flags.DEFINE_string("workdir", None, "Run folder (or its logs/ folder) holding profiler "
                        "traces (*.xplane.pb) written with --profile_steps.")
    flags.DEFINE_bool("json", False, "Print each session's figures as one JSON object per line.")
    flags.mark_flag_as_required("workdir")


def main(argv: list[str]) -> None:
    from trainer.core import profiling

    workdir = flags.FLAGS.workdir
    if not os.path.isdir(workdir):
        program.fail(f"--workdir={workdir}: no such folder; pass a run folder trained with "
                     "--profile_steps=START,END")
    found = profiling.sessions(workdir)
    if not found:
        program.fail(f"--workdir={workdir}: no profile sessions (*.xplane.pb) under it; train "
                     "with --profile_steps=START,END (e.g. 5,10) to record one")
    for session in found:
        summary = profiling.step_summary(session)
        if flags.FLAGS.json:
            summary["slowest_stage"] = profiling.slowest_stage(session)
            print(json.dumps(summary, sort_keys=True))
            continue
        print(f"{session}: {summary['steps']} steps, {summary['step_time_ms']:.1f} ms/step, "
              f"input {summary['input_share']:.1%} -- {summary['input_conclusion']}")


def run() -> None:
    define_flags()
    program.run(main, prog="trainer.profile", doc=__doc__, flag_modules=[__name__])


if __name__ == "__main__":
    run()
