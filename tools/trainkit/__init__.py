"""Offline training kit (tools/ only; TensorFlow lives here, never in the daemon): the spiral, the
dataset files, and the models, training and conversion built on them."""
