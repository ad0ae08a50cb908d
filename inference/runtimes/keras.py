"""Keras runtime on TensorFlow: one compiled graph call per batch, on the GPU when there is one.

Batches are padded up to a few fixed sizes (powers of two up to the model's
``max_batch_size``) so the ``tf.function`` is traced once per size, at warm-up,
and never again while serving.
"""

from __future__ import annotations

import logging
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

_configured = False


def configure_tensorflow() -> None:
    """Set TensorFlow's threads and GPU memory growth; must run before TensorFlow's first operation.

    Batches already run one at a time per device, and the event loop needs a
    core of its own, so TensorFlow's CPU kernels get the other cores
    (``PLATFORM_TF_INTRA_OP_THREADS``) and one thread between operations:
    more would only spin against the event loop.
    """
    global _configured
    if _configured:
        return
    import tensorflow as tf
    from django.conf import settings

    try:
        tf.config.threading.set_intra_op_parallelism_threads(settings.PLATFORM_TF_INTRA_OP_THREADS)
        tf.config.threading.set_inter_op_parallelism_threads(settings.PLATFORM_TF_INTER_OP_THREADS)
    except RuntimeError:  # the runtime already started (e.g. a model was trained in this process)
        logger.info("TensorFlow's thread pools were already set up; keeping them")
    for gpu in tf.config.list_physical_devices("GPU"):
        try:
            tf.config.experimental.set_memory_growth(gpu, True)
        except RuntimeError:  # already initialised; growth cannot change any more
            pass
    _configured = True


def tensorflow_device() -> str:
    """The TensorFlow device to place models on: the first GPU if there is one."""
    import tensorflow as tf

    configure_tensorflow()
    return "/GPU:0" if tf.config.list_physical_devices("GPU") else "/CPU:0"


def padded_sizes(max_batch_size: int) -> list[int]:
    sizes = [1]
    while sizes[-1] < max_batch_size:
        sizes.append(min(sizes[-1] * 2, max_batch_size))
    return sizes


class KerasRuntime:
    # TensorFlow runs the graph with the GIL released, on its own threads.
    holds_gil = False
    engine = "tensorflow"

    def __init__(
        self,
        model: Any,
        *,
        task: str,
        n_features: int,
        classes: list[str] | None,
        max_batch_size: int,
    ) -> None:
        import tensorflow as tf

        self.model = model
        self.task = task
        self.n_features = n_features
        self.classes = [str(c) for c in classes] if classes is not None else None
        self.sizes = padded_sizes(max_batch_size)
        self._tf_device = tensorflow_device()
        self.device = "gpu:0" if "GPU" in self._tf_device else "cpu"
        self._fn = tf.function(lambda x: model(x, training=False), autograph=False)
        self._tf = tf

    def _size_for(self, rows: int) -> int:
        for size in self.sizes:
            if size >= rows:
                return size
        return self.sizes[-1]

    def _run(self, chunk: np.ndarray) -> np.ndarray:
        rows = chunk.shape[0]
        size = self._size_for(rows)
        if size != rows:
            padded = np.zeros((size, self.n_features), dtype=np.float32)
            padded[:rows] = chunk
            chunk = padded
        with self._tf.device(self._tf_device):
            out = self._fn(self._tf.constant(chunk, dtype=self._tf.float32))
        return np.asarray(out)[:rows]

    def predict(self, batch: np.ndarray) -> np.ndarray:
        batch = np.ascontiguousarray(batch, dtype=np.float32)
        largest = self.sizes[-1]
        if batch.shape[0] <= largest:
            out = self._run(batch)
        else:
            out = np.concatenate([self._run(batch[i : i + largest]) for i in range(0, batch.shape[0], largest)])
        if out.ndim == 2 and out.shape[1] == 1:
            if self.task == "classification":
                # A sigmoid unit is the probability of the second class.
                out = np.concatenate([1.0 - out, out], axis=1)
            else:
                out = out[:, 0]
        return out

    def warmup(self) -> None:
        # One trace per padded size is the plan, not the retracing TensorFlow warns about.
        tf_logger = self._tf.get_logger()
        level = tf_logger.level
        tf_logger.setLevel(logging.ERROR)
        try:
            for size in self.sizes:
                self._run(np.zeros((size, self.n_features), dtype=np.float32))
        finally:
            tf_logger.setLevel(level)
        logger.info("Warmed up Keras model on %s for batch sizes %s", self._tf_device, self.sizes)

    @property
    def traces(self) -> int:
        """How many graphs the compiled function holds (one per padded size once warm)."""
        return int(self._fn.experimental_get_tracing_count())
