"""RBF-kernel SVM on object features (§4.3.2 for DeCAF, and the hand-crafted stand-in).

StandardScaler + ``SVC(kernel="rbf")``; C and gamma are chosen by a seeded, stratified k-fold
grid search on the TRAINING objects only (accuracy, the paper's object metric). gamma is searched
as multiples of 1 / n_features ("scale" for standardised features). Small data is handled
gracefully: folds = min(``folds``, smallest class count), at least 2; a class with fewer objects
than folds only raises sklearn's warning (silenced); with no class of >= 2 objects the search
is skipped (C=1, gamma="scale"); with one class only a constant predictor is used.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from mvfcnn.core.settings import with_defaults


@dataclass
class FittedSVM:
    """A fitted pipeline (or the single training class) and the grid-search outcome."""

    model: Any
    classes: np.ndarray
    best_params: dict[str, Any] = field(default_factory=dict)
    cv_accuracy: float | None = None
    folds: int = 0

    def predict(self, features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(labels, confidence): confidence is the winning class's one-vs-rest decision value."""
        features = np.asarray(features, dtype=np.float64)
        if self.model is None:
            return (np.full(len(features), self.classes[0], dtype=self.classes.dtype),
                    np.ones(len(features)))
        labels = self.model.predict(features)
        decision = self.model.decision_function(features)
        if decision.ndim == 1:  # binary: distance to the one hyperplane
            confidence = np.abs(decision)
        else:
            confidence = decision.max(axis=1)
        return labels, confidence.astype(np.float64)


def _pipeline(seed: int, C: float = 1.0, gamma: Any = "scale") -> Any:
    from sklearn.pipeline import Pipeline
    from sklearn.preprocessing import StandardScaler
    from sklearn.svm import SVC

    return Pipeline([("scale", StandardScaler()),
                     ("svc", SVC(kernel="rbf", C=C, gamma=gamma,
                                 decision_function_shape="ovr", random_state=seed))])


def fit_svm(features: np.ndarray, labels: np.ndarray, *, seed: int = 0,
            params: dict[str, Any] | None = None) -> FittedSVM:
    """Grid-searched StandardScaler + RBF SVC (see the module docstring)."""
    from sklearn.model_selection import GridSearchCV, StratifiedKFold

    p = with_defaults(("baselines", "svm"), params)
    x = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels)
    if x.ndim != 2 or len(x) != len(y) or len(y) == 0:
        raise ValueError(f"need (N, F) features and N labels, got {x.shape} and {y.shape}")
    classes, counts = np.unique(y, return_counts=True)
    if len(classes) == 1:
        return FittedSVM(model=None, classes=classes)
    if counts.max() < 2:
        model = _pipeline(seed).fit(x, y)
        return FittedSVM(model=model, classes=classes, best_params={"C": 1.0, "gamma": "scale"})
    folds = max(2, min(int(p["folds"]), int(counts.min())))
    base_gamma = 1.0 / x.shape[1]
    grid = {"svc__C": [float(c) for c in p["C"]],
            "svc__gamma": [float(f) * base_gamma for f in p["gamma_factor"]]}
    search = GridSearchCV(_pipeline(seed), grid, scoring="accuracy", n_jobs=1, refit=True,
                          cv=StratifiedKFold(n_splits=folds, shuffle=True, random_state=seed),
                          error_score=0.0)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*least populated class.*")
        warnings.filterwarnings("ignore", category=UserWarning, module="sklearn")
        search.fit(x, y)
    best = {"C": search.best_params_["svc__C"],
            "gamma_factor": search.best_params_["svc__gamma"] / base_gamma,
            "gamma": search.best_params_["svc__gamma"]}
    return FittedSVM(model=search.best_estimator_, classes=classes, best_params=best,
                     cv_accuracy=float(search.best_score_), folds=folds)
