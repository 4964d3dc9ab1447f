"""Names the CNN's modules share: the settings' choices and the run folder's file names.

A leaf (imports nothing), so the program modules can list choices in --help without loading
TensorFlow, and train, evaluation, export and the tasks share file names without importing
each other.
"""

# choices of the training settings (trainer.cnn.config checks them)
ARCHITECTURES = ("study", "compact", "efficientnet_b0", "residual")
TASKS = ("binary", "diagnosis")
MONITORS = ("val_accuracy", "val_auc", "val_balanced_accuracy")
CLASS_BALANCE_MODES = ("none", "class_weights", "sampling")
# --source_label_independence: how each source is weighted (trainer.core.source_prior)
SOURCE_LABEL_INDEPENDENCE = ("none", "records", "rare_class")
OPTIMIZERS = ("rmsprop", "adamw")
LR_SCHEDULES = ("constant", "cosine")
DEFAULT_ADAMW_WEIGHT_DECAY = 0.05

# the run folder (workdir) and its export
REPORT_JSON = "report.json"
REPORT_MD = "report.md"
PLOTS_DIR = "plots"
EVAL_SPLITS = ("validation", "test")
CLASSES_NAME = "classes.json"       # the diagnosis task's class mapping
TRAIN_CONFIG_NAME = "train_config.json"  # the settings the run folder was started with
# settings that shape the model: a run folder resumes only with the values it started with
MODEL_SETTINGS = ("model", "width_multiplier", "dropout", "l2", "image_size", "task",
                  "use_metadata", "color_constancy", "center_crop",
                  "source_adversary_weight", "init_encoder")
EXPORT_DIR = "export"
KERAS_NAME = "model.keras"
SAVED_MODEL_NAME = "saved_model"
SERVING_CONFIG_NAME = "serving_config.json"
# external evaluation (trainer.cnn.evaluate)
EXTERNAL_DIR = "external"
PREDICTIONS_CSV = "predictions.csv"
COLOR_CONSTANCY = ("none", "shades_of_grey")  # trainer.cnn.color_constancy
