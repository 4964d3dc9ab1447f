"""Domain-adversarial training against the acquisition source (DANN, Ganin & Lempitsky 2015)
for the binary task.

On HAM10000 a net recognises the clinic from the image and scores well in-source but worse
on a clinic it never saw. During training a small head on the image model's penultimate
features (the input of its `probability` unit) predicts the record's source_collection
through a gradient-reversal layer: the head learns the source normally, while the features
receive -weight times its gradient, so they are pushed to carry no source information.
Total loss = the task loss + the source cross-entropy.

The head exists only in the fit wrapper (with_source_head), which shares every weight of the
plain image model: that model, with one input and one output, is what is saved, evaluated
and exported. The wrapper keeps the plain model's single output (the probability) and adds
the source cross-entropy with add_loss, so the compiled loss, metric names (val_auc, the
checkpoint's monitor) and class weights stay those of the plain binary task.
"""
from __future__ import annotations

import keras
import tensorflow as tf

HEAD_UNITS = 64  # the source head: Dense 64 ReLU -> Dense num_sources (logits)


@keras.saving.register_keras_serializable(package="isicflow")
class GradientReversal(keras.layers.Layer):
    """Identity forward; backward the incoming gradient times -weight (tf.custom_gradient).
    weight 0 stops the gradient into the features; the layer has no weights."""

    def __init__(self, weight: float = 1.0, **kwargs):
        super().__init__(**kwargs)
        if not weight >= 0:
            raise ValueError(f"GradientReversal weight must be >= 0, got {weight}")
        self.weight = float(weight)

    def call(self, inputs):
        weight = self.weight

        @tf.custom_gradient
        def reverse(x):
            def grad(upstream):
                return upstream * tf.constant(-weight, upstream.dtype)
            return tf.identity(x), grad

        return reverse(inputs)

    def compute_output_shape(self, input_shape):
        return input_shape

    def get_config(self):
        return {**super().get_config(), "weight": self.weight}


@keras.saving.register_keras_serializable(package="isicflow")
class SourceAdversary(keras.layers.Layer):
    """(probability, features, source index) -> probability, unchanged. In training it adds
    the mean source cross-entropy of head(GradientReversal(features)) against the index as a
    loss (add_loss); outside training it adds nothing and never reads the index (validation
    feeds -1). An index outside [0, num_sources) in training is an error, not a silent 0."""

    def __init__(self, num_sources: int, weight: float, units: int = HEAD_UNITS, **kwargs):
        super().__init__(**kwargs)
        if num_sources < 2:
            raise ValueError(f"a source adversary needs >= 2 sources, got {num_sources}")
        self.num_sources, self.weight, self.units = int(num_sources), float(weight), int(units)
        self.reversal = GradientReversal(weight, name="gradient_reversal")
        self.hidden = keras.layers.Dense(units, activation="relu", name="source_hidden")
        self.logits = keras.layers.Dense(num_sources, dtype="float32", name="source_logits")
        # Training-only gauges of the adversary (fit's logs, history.json): source
        # cross-entropy near log(num_sources) and accuracy near chance mean the features carry
        # little source information. Their val_ twins stay 0: validation has no source target.
        self.loss_tracker = keras.metrics.Mean(name="source_loss")
        self.accuracy = keras.metrics.SparseCategoricalAccuracy(name="source_accuracy")

    def build(self, input_shape):
        features = input_shape[1]
        self.hidden.build(features)
        self.logits.build(tuple(features[:-1]) + (self.units,))

    def source_logits(self, features):
        """float32 [B, num_sources] logits of the source, through the reversal."""
        return self.logits(self.hidden(self.reversal(features)))

    def call(self, inputs, training=False):
        probability, features, source = inputs
        if training:
            source = keras.ops.reshape(keras.ops.cast(source, "int32"), (-1,))
            checked = tf.debugging.assert_less(
                source, self.num_sources, message=f"source index not in [0, {self.num_sources})")
            with tf.control_dependencies([checked, tf.debugging.assert_non_negative(
                    source, message="source index < 0 in training")]):
                source = tf.identity(source)
            logits = self.source_logits(features)
            loss = keras.ops.mean(keras.losses.sparse_categorical_crossentropy(
                source, logits, from_logits=True))
            self.add_loss(loss)
            self.loss_tracker.update_state(loss)
            self.accuracy.update_state(source, logits)
        return probability

    def compute_output_shape(self, input_shape):
        return input_shape[0]

    def get_config(self):
        return {**super().get_config(), "num_sources": self.num_sources,
                "weight": self.weight, "units": self.units}


def penultimate_model(model: keras.Model, output: str = "probability") -> keras.Model:
    """Model(image, [probability, features]) over `model`'s own layers (shared weights), the
    features being the input of its `output` unit (the pooled vector the classifier reads).
    ValueError when the model has no such layer or several inputs."""
    if len(model.inputs) != 1:
        raise ValueError(f"a source adversary needs an image-only model; {model.name} has "
                         f"{len(model.inputs)} inputs {[tuple(t.shape) for t in model.inputs]}")
    names = [layer.name for layer in model.layers]
    if output not in names:
        raise ValueError(f"{model.name} has no {output!r} layer to read the features of "
                         f"(its last layers: {names[-3:]})")
    features = model.get_layer(output).input
    return keras.Model(model.inputs[0], [model.outputs[0], features],
                       name="features_" + model.name)


def with_source_head(model: keras.Model, num_sources: int, weight: float) -> keras.Model:
    """Model([image, source index int32], probability) for fit: `model`'s probability, with
    the source adversary (SourceAdversary) on its penultimate features adding the source
    cross-entropy in training. Shares every weight of `model` (the head's own weights are
    extra), so `model` stays the plain image model that is saved, evaluated and exported."""
    trunk = penultimate_model(model)
    image = keras.Input(tuple(model.inputs[0].shape[1:]), dtype=model.inputs[0].dtype,
                        name="image")
    source = keras.Input((), dtype="int32", name="source_index")
    probability, features = trunk(image)
    out = SourceAdversary(num_sources, weight, name="source_adversary")(
        [probability, features, source])
    return keras.Model([image, source], out, name="source_adversary_" + model.name)


def source_head(fit_model: keras.Model) -> SourceAdversary:
    """The SourceAdversary layer of a with_source_head wrapper (its source logits, tests)."""
    return fit_model.get_layer("source_adversary")
