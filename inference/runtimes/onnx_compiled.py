"""A scikit-learn estimator compiled to ONNX and run by ONNX Runtime, kept only where it answers the same.

On the small batches a serving pool sees, scikit-learn spends nearly all of a
call on input validation and dispatch: ``predict_proba`` of one iris row
takes about 170 µs, the same logistic regression in ONNX Runtime about 12 µs.
skl2onnx converts the fitted estimator (pipelines included) in double
precision, so the compiled graph computes what scikit-learn computes, to the
last bits; :func:`compile_estimator` still runs both on probe rows and keeps
the compiled call only when every output agrees within ``RTOL``/``ATOL``.

Probe rows cannot show where two implementations break ties differently, so
only estimators whose prediction is continuous arithmetic are compiled
(``COMPILABLE``: linear models, scalers, PCA, multi-layer perceptrons, and
pipelines made of them). Trees and neighbours compare features with
thresholds and distances, where a rounding difference or a tie changes the
answer (seen: k-nearest neighbours agreeing on every probe row and differing
on iris's duplicate flowers); they stay on scikit-learn, as does whatever
cannot be converted or answers differently, with the reason given.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np

logger = logging.getLogger(__name__)

#: How close the compiled outputs must be to scikit-learn's on the probe rows.
RTOL = 1e-9
ATOL = 1e-12
#: Probe rows besides the caller's: zeros, and a fixed draw of moderate values.
PROBE_ROWS = 32
PROBE_SEED = 20261130


#: scikit-learn estimators (by class name, defined in scikit-learn itself) that may be compiled.
COMPILABLE = frozenset({
    # linear models
    "LogisticRegression", "LogisticRegressionCV", "SGDClassifier", "LinearRegression", "Ridge", "RidgeCV",
    "Lasso", "LassoCV", "ElasticNet", "ElasticNetCV", "BayesianRidge", "HuberRegressor", "SGDRegressor",
    "LinearSVR",
    # transformers
    "StandardScaler", "MinMaxScaler", "MaxAbsScaler", "RobustScaler", "Normalizer", "PCA",
    # neural networks
    "MLPClassifier", "MLPRegressor",
})


@dataclass(frozen=True)
class Compiled:
    """The outcome of compiling one estimator: the call to use, or why there is none."""

    call: Callable[[np.ndarray], np.ndarray] | None
    reason: str


def compile_estimator(estimator: Any, reference: Callable[[np.ndarray], Any], *, task: str, n_features: int,
                      probe: np.ndarray | None = None) -> Compiled:
    """Compile ``estimator``; ``reference`` is the scikit-learn call the compiled one must agree with."""
    refused = [name for name in _step_names(estimator) if name not in COMPILABLE]
    if refused:
        return Compiled(None, f"{', '.join(sorted(set(refused)))} is not among the estimators compiled to ONNX "
                              "(continuous arithmetic only)")
    try:
        import onnxruntime
        from skl2onnx import to_onnx
        from skl2onnx.common.data_types import DoubleTensorType
    except ImportError as exc:
        return Compiled(None, f"ONNX Runtime or skl2onnx is not installed ({exc})")
    try:
        graph = to_onnx(
            estimator,
            initial_types=[("input", DoubleTensorType([None, n_features]))],
            # Probabilities as one [N, C] tensor, not a list of per-row dictionaries.
            options={"zipmap": False} if task == "classification" else None,
        )
        session = onnxruntime.InferenceSession(graph.SerializeToString(), _session_options(onnxruntime),
                                               providers=["CPUExecutionProvider"])
    except Exception as exc:  # skl2onnx raises many kinds for estimators it has no converter for
        return Compiled(None, f"skl2onnx could not convert {type(estimator).__name__}: {_first_line(exc)}")
    outputs = [output.name for output in session.get_outputs()]
    wanted = "probabilities" if task == "classification" else outputs[-1]
    if wanted not in outputs:
        return Compiled(None, f"the converted graph has no {wanted!r} output (it has {', '.join(outputs)})")
    rows = probe_rows(n_features, probe)
    try:
        expected = np.asarray(reference(rows))
    except Exception as exc:
        return Compiled(None, f"scikit-learn could not compute the probe rows: {_first_line(exc)}")
    # Each row's answer has scikit-learn's shape: a regressor's graph answers [N, 1] whether scikit-learn
    # answers [N] (a 1-D target) or [N, 1] (a 2-D one).
    row_shape = expected.shape[1:]
    input_name = session.get_inputs()[0].name
    run = session.run

    def call(batch: np.ndarray) -> np.ndarray:
        if batch.dtype != np.float64:  # the graph's input is double; the pool sends float64 already
            batch = batch.astype(np.float64)
        return run([wanted], {input_name: batch})[0].reshape(len(batch), *row_shape)

    try:
        got = call(rows)
    except Exception as exc:  # including a graph whose answers do not fit scikit-learn's shape
        return Compiled(None, f"the compiled graph could not answer the probe rows as scikit-learn does: "
                              f"{_first_line(exc)}")
    close = np.isclose(got, expected, rtol=RTOL, atol=ATOL, equal_nan=True)
    if not close.all():
        return Compiled(None, f"the compiled graph differs from scikit-learn in {int((~close).sum())} of "
                              f"{close.size} outputs on the probe rows")
    return Compiled(call, "compiled with skl2onnx, outputs equal to scikit-learn's on the probe rows")


def probe_rows(n_features: int, extra: np.ndarray | None = None) -> np.ndarray:
    """Zeros, ``PROBE_ROWS`` fixed rows of moderate values, and the caller's own rows."""
    draw = np.random.default_rng(PROBE_SEED).normal(0.0, 3.0, size=(PROBE_ROWS, n_features))
    parts = [np.zeros((1, n_features)), draw]
    if extra is not None and extra.size:
        parts.append(np.asarray(extra, dtype=np.float64).reshape(-1, n_features))
    return np.ascontiguousarray(np.concatenate(parts), dtype=np.float64)


def _step_names(estimator: Any) -> list[str]:
    """The class name of the estimator and of every step of a pipeline, nested ones included.

    A class from outside scikit-learn gets its module in its name, so a namesake never passes.
    """
    from sklearn.pipeline import Pipeline

    if type(estimator) is Pipeline:
        return [name for _, step in estimator.steps if step not in (None, "passthrough")
                for name in _step_names(step)]
    cls = type(estimator)
    return [cls.__name__ if cls.__module__.startswith("sklearn.") else f"{cls.__module__}.{cls.__qualname__}"]


def _session_options(onnxruntime: Any) -> Any:
    options = onnxruntime.SessionOptions()
    # One thread, no spinning: calls are small and the pool already decides where they run; a spinning
    # intra-op pool would burn the core the event loop needs.
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.add_session_config_entry("session.inter_op.allow_spinning", "0")
    options.log_severity_level = 3
    return options


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
