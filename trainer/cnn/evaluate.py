"""Score a trained CNN on any dataset the data engine wrote (external evaluation), at the
threshold its training run chose on its own validation split.

    python -m trainer.cnn.evaluate --model=RUN_OR_EXPORT --data_dir=OTHER_DATASET [--splits=all]
        [--output=DIR] [--tta] [--batch_size=32] [--image_size=S] [--bootstrap=1000]
        [--adapt_batchnorm=2]

--model: a run folder (model.keras + report.json, whose threshold training chose on its own
validation split) or an export folder (model.keras + serving_config.json). The threshold is
never re-chosen on the data scored here (--threshold overrides it explicitly, and the report
says so). --splits: 'all' (default: every split of the dataset holding benign/malignant records
at the model's size; with several, a pooled 'all' row is added) or a comma list. --output:
default <model>/external/<dataset folder name>. --tta: the 8 flips/rot90s averaged (default:
as the export recorded it, or the run's training evaluation, report.json "tta").
--adapt_batchnorm=N (N >= 2): the model adapted to the scored data without its labels,
batch-norm statistics re-estimated on the other folds' images (trainer.cnn.adapt_batchnorm; a
clinic's own unlabelled images), recorded in the report.

Writes report.json, report.md, predictions.csv (split, image_id, label, probability,
predicted) and plots/{roc,pr,confusion,reliability}.png (trainer.cnn.evaluation.evaluate_external).

A diagnosis model (--task=diagnosis: a run folder with classes.json, or its export) is scored
on its own classes (trainer.cnn.diagnosis_scoring): per split balanced accuracy, accuracy,
per-class recall and support, the confusion matrix; predictions.csv has split, image_id, label,
predicted (class names) and p_<class> per class; plots/confusion.png. 'all' splits are those
holding records of a known diagnosis. --tta averages its class probabilities over the 8 views
(default: as its training evaluation or export recorded it); --threshold is refused for it (a
binary setting); --bootstrap, --seed and --calibration_bins do not apply.

Exit code 0 when written, 2 with one line on stderr when it cannot run (missing model, a model
of another kind, dataset without manifest, missing image size, empty or unknown splits, a
binary-only flag for a diagnosis model).
"""
from __future__ import annotations

from typing import Sequence

from absl import flags

from trainer.core import program

FLAGS = flags.FLAGS


def define_flags() -> None:
    flags.DEFINE_string("model", None, "Run folder (model.keras + report.json) or export folder "
                        "(model.keras + serving_config.json).")
    flags.DEFINE_string("data_dir", None, "A dataset written by beam_jobs.preprocess "
                        "(manifest.json).")
    flags.DEFINE_string("splits", "all", "'all' (every split with records the model scores: "
                        "benign/malignant, or a known diagnosis) or a comma list of "
                        "train,validation,test.")
    flags.DEFINE_string("output", None, "Folder for the report; default "
                        "<model>/external/<dataset name>.")
    flags.DEFINE_bool("tta", None, "Test-time augmentation (8 flips/rot90s averaged), either "
                      "task; unset = as the run's evaluation (report.json) or the export "
                      "recorded it.")
    flags.DEFINE_integer("batch_size", 32, "Images per model call.", lower_bound=1)
    flags.DEFINE_integer("image_size", None, "Dataset size to read; default (and only allowed "
                         "value) the model's input size.")
    flags.DEFINE_integer("bootstrap", 1000, "Bootstrap resamples for the intervals.",
                         lower_bound=0)
    flags.DEFINE_integer("seed", 0, "Bootstrap seed.")
    flags.DEFINE_integer("calibration_bins", 10, "Equal-width bins of the calibration error and "
                         "reliability diagram.", lower_bound=1)
    flags.DEFINE_float("threshold", None, "Use this threshold instead of the one the model "
                       "recorded (said so in the report), in [0, 1]. Binary models only.",
                       lower_bound=0.0,
                       upper_bound=1.0)
    flags.DEFINE_integer("adapt_batchnorm", 0, "0: score the model as trained. N >= 2: adapt "
                         "it to the scored data without labels (its batch-norm statistics "
                         "re-estimated on those images, AdaBN), cross-fitted in N folds by image "
                         "id so no image is scored with statistics it helped estimate "
                         "(trainer.cnn.adapt_batchnorm; --seed picks the sample beyond "
                         "2,048 images per copy, fewer above 147 px with 2 folds, 1 GiB in "
                         "all).", lower_bound=0)
    flags.mark_flags_as_required(["model", "data_dir"])


def main(argv: Sequence[str]) -> int:
    del argv  # program.run refuses stray words
    from trainer.cnn import evaluation

    try:
        result = evaluation.evaluate_external(
            FLAGS.model, FLAGS.data_dir, splits=FLAGS.splits, out=FLAGS.output, tta=FLAGS.tta,
            batch_size=FLAGS.batch_size, image_size=FLAGS.image_size, bootstrap=FLAGS.bootstrap,
            seed=FLAGS.seed, threshold=FLAGS.threshold, calibration_bins=FLAGS.calibration_bins,
            adapt_batchnorm=FLAGS.adapt_batchnorm)
    except (evaluation.EvaluationError, FileNotFoundError) as e:
        program.fail(str(e))
    for split, values in result["splits"].items():
        if result.get("task") == "diagnosis":
            print(f"{split}: {values['n']} images, balanced accuracy "
                  f"{values['balanced_accuracy']:.4f}, accuracy {values['accuracy']:.4f}")
        elif values.get("cases"):
            print(f"{split}: {values['cases']} cases, auc {values['auc']:.4f}, sensitivity "
                  f"{values['sensitivity']:.4f}, specificity {values['specificity']:.4f} at "
                  f"threshold {result['threshold']['threshold']:.4f}")
    print(f"external report: {result['out']}")
    return 0


def run(argv: Sequence[str] | None = None, prog: str = "trainer.cnn.evaluate") -> None:
    define_flags()
    program.run(main, prog=prog, doc=__doc__, argv=argv, flag_modules=[__name__])


if __name__ == "__main__":
    run()
