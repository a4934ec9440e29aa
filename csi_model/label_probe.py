"""How much does an embedding already know about a musical category? Linear and kNN probes, grouped by work.

A probe is trained on performance embeddings to predict a label (a metre, a mode, a region...) and scored on
performances of *other works* only: cross-validation folds are grouped by work, so a probe cannot score by
recognising the tune it saw in training -- for a cover-song model that would be trivially easy. Scores are
compared with a majority-class baseline (always answering the most frequent value: balanced accuracy 1/K) on
the same performances, with percentile intervals from a bootstrap over works (performances of one work are not
independent). A probe far above its baseline shows the category is reflected in the embedding; a probe at the
baseline shows only that this probe, on this model and this many works, finds no evidence -- not that the
category is absent from the music or from the features.

Shapes: ``vectors`` ``[P, D]`` one unit row per performance; ``labels`` ``[P]`` text values; ``groups`` ``[P]``
work ids.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from csi_model.atomic import atomic_path

N_SPLITS = 5
KNN_NEIGHBOURS = 5
N_BOOTSTRAP = 1000
METRICS = ("accuracy", "balanced_accuracy", "macro_f1")
PROBES = ("logistic", "knn", "majority")


class ProbeDataError(ValueError):
    """Too little labelled data to probe (fewer than two values, or fewer than two works)."""


@dataclass(frozen=True)
class Interval:
    point: float
    ci_low: float
    ci_high: float

    def to_dict(self) -> dict[str, float]:
        return {"point": self.point, "ci_low": self.ci_low, "ci_high": self.ci_high}


@dataclass(frozen=True)
class ProbeResult:
    """Out-of-fold predictions of every probe and their scores; ``verdict`` is the sentence a report shows."""

    classes: list[str]
    y_true: np.ndarray  # [P] class index
    predictions: dict[str, np.ndarray]  # probe -> [P] out-of-fold class index
    scores: dict[str, dict[str, Interval]]  # probe -> metric -> interval
    gain: Interval  # balanced accuracy of the logistic probe minus the baseline's, bootstrapped over works
    n_folds: int
    n_works: int
    verdict: str
    left_out: dict[str, int] = field(default_factory=dict)  # values of a single work -> performances left out
    kept: np.ndarray = field(default_factory=lambda: np.ones(0, bool))  # [P_in] bool: the input rows probed

    def record(self) -> dict:
        return {"classes": self.classes, "n_performances": int(len(self.y_true)), "n_works": self.n_works,
                "left_out_single_work_values": self.left_out,
                "n_folds": self.n_folds, "gain_balanced_accuracy": self.gain.to_dict(), "verdict": self.verdict,
                "scores": {p: {m: i.to_dict() for m, i in s.items()} for p, s in self.scores.items()}}


@dataclass(frozen=True)
class LinearProbe:
    """A fitted multinomial (or binary) logistic regression as plain arrays, so it is saved and loaded without
    pickles: ``coef`` ``[K or 1, D]``, ``intercept`` ``[K or 1]``."""

    classes: list[str]
    coef: np.ndarray
    intercept: np.ndarray

    def predict_proba(self, vectors: np.ndarray) -> np.ndarray:
        """``[N, D]`` unit rows -> ``[N, K]`` class probabilities (as scikit-learn's ``predict_proba``)."""
        logits = np.asarray(vectors, dtype=np.float64) @ self.coef.T + self.intercept
        if len(self.classes) == 2 and logits.shape[1] == 1:
            logits = np.hstack([np.zeros_like(logits), logits])
        logits -= logits.max(axis=1, keepdims=True)
        weights = np.exp(logits)
        return weights / weights.sum(axis=1, keepdims=True)

    def save(self, path: str | Path) -> None:
        with atomic_path(path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, classes=np.asarray(self.classes, dtype=str), coef=self.coef, intercept=self.intercept)

    @classmethod
    def load(cls, path: str | Path) -> LinearProbe:
        with np.load(path, allow_pickle=False) as data:
            return cls([str(c) for c in data["classes"]], data["coef"], data["intercept"])


def grouped_folds(y: np.ndarray, groups: np.ndarray, seed: int = 0,
                  n_splits: int = N_SPLITS) -> list[tuple[np.ndarray, np.ndarray]]:
    """(train indices, test indices) of cross-validation folds in which no group (work) is on both sides; classes
    stratified as far as whole works allow. At most one fold per work; at least two works are needed."""
    from sklearn.model_selection import GroupKFold, StratifiedGroupKFold

    n_groups = len(np.unique(groups))
    if n_groups < 2:
        raise ProbeDataError(f"{n_groups} work(s) with a value: a work-grouped split needs at least two")
    n_splits = min(n_splits, n_groups)
    if np.bincount(np.unique(y, return_inverse=True)[1]).max() >= n_splits:
        splitter = StratifiedGroupKFold(n_splits=n_splits, shuffle=True, random_state=seed)
    else:  # no class fills every fold: stratifying is impossible, grouping is not
        splitter = GroupKFold(n_splits=n_splits)
    return [(train, test) for train, test in splitter.split(np.zeros(len(y)), y, groups) if len(test)]


def _logistic(seed: int):
    """Standardised features (unit embeddings have tiny coordinates, which C=1 would regularise to nothing), then
    L2 logistic regression (C=1, lbfgs; multinomial beyond two classes) with classes weighted inversely to their
    frequency: the value shares of a training fold are not learnt as a prior (with folds of whole works they
    differ from the test fold's, which would pull the probe below chance)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    return make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000, class_weight="balanced",
                                                              random_state=seed))


def fit_linear(vectors: np.ndarray, y: np.ndarray, classes: list[str], seed: int = 0) -> LinearProbe:
    """Logistic regression on ``vectors`` ``[N, D]`` and class indices ``y`` ``[N]`` (every class present), the
    standardisation folded into the weights: ``w·(x − μ)/σ + b`` = ``(w/σ)·x + (b − Σ w μ/σ)``."""
    pipeline = _logistic(seed).fit(vectors, y)
    scaler, model = pipeline[0], pipeline[-1]
    if len(model.classes_) != len(classes):
        raise ProbeDataError(f"{len(model.classes_)} of the {len(classes)} values occur in the training data")
    coef = model.coef_ / scaler.scale_
    return LinearProbe(list(classes), coef.astype(np.float64),
                       (model.intercept_ - coef @ scaler.mean_).astype(np.float64))


def probe_label(vectors: np.ndarray, values: np.ndarray, groups: np.ndarray, seed: int = 0,
                n_bootstrap: int = N_BOOTSTRAP) -> ProbeResult:
    """Cross-validated logistic, kNN and majority probes of one label, grouped by work; see the module doc."""
    from sklearn.neighbors import KNeighborsClassifier

    values, groups = np.asarray(values, dtype=str), np.asarray(groups)
    single = single_work_values(values, groups)
    kept = ~np.isin(values, list(single))
    vectors, values, groups = vectors[kept], values[kept], groups[kept]
    classes, y = np.unique(values, return_inverse=True)
    if len(classes) < 2:
        raise ProbeDataError(f"only one value ({classes.tolist()}): nothing to tell apart")
    folds = grouped_folds(y, groups, seed)
    predictions = {name: np.full(len(y), -1) for name in PROBES}
    predictions["majority"][:] = np.bincount(y).argmax()  # one constant answer: balanced accuracy exactly 1/K
    for train, test in folds:
        if len(np.unique(y[train])) == 1:  # the fold's works all share one value: that value is every answer
            predictions["logistic"][test] = y[train][0]
        else:
            predictions["logistic"][test] = _logistic(seed).fit(vectors[train], y[train]).predict(vectors[test])
        knn = KNeighborsClassifier(n_neighbors=min(KNN_NEIGHBOURS, len(train)), metric="cosine")
        predictions["knn"][test] = knn.fit(vectors[train], y[train]).predict(vectors[test])
    scores, gain = bootstrap_scores(y, predictions, groups, len(classes), seed, n_bootstrap)
    n_works = len(np.unique(groups))
    return ProbeResult(classes.tolist(), y, predictions, scores, gain, len(folds), n_works,
                       verdict(scores, gain, n_works), single, kept)


def single_work_values(values: np.ndarray, groups: np.ndarray) -> dict[str, int]:
    """Values found in one work only -> their performance count: no work-grouped split can test them (the
    probe would have to learn the value from that work and test on it), so they are left out and reported."""
    pairs = {(v, g) for v, g in zip(values.tolist(), groups.tolist())}
    works_of: dict[str, int] = {}
    for value, _ in pairs:
        works_of[value] = works_of.get(value, 0) + 1
    return {v: int(np.sum(values == v)) for v, n in sorted(works_of.items()) if n < 2}


def classification_scores(y_true: np.ndarray, y_pred: np.ndarray, n_classes: int) -> dict[str, float]:
    """Accuracy, balanced accuracy (mean recall over the classes present in ``y_true``) and macro-F1 (over all
    ``n_classes``; a class never true nor predicted scores 0), as scikit-learn defines them, from the confusion
    counts in numpy -- the bootstrap calls this thousands of times."""
    counts = np.bincount(y_true * n_classes + y_pred, minlength=n_classes * n_classes).reshape(n_classes, n_classes)
    hits, true_n, pred_n = np.diag(counts), counts.sum(axis=1), counts.sum(axis=0)
    present = true_n > 0
    denominator = true_n + pred_n
    f1 = np.divide(2 * hits, denominator, out=np.zeros(n_classes), where=denominator > 0)
    return {"accuracy": float(hits.sum() / max(len(y_true), 1)),
            "balanced_accuracy": float(np.mean(hits[present] / true_n[present])),
            "macro_f1": float(f1.mean())}


def bootstrap_scores(y: np.ndarray, predictions: dict[str, np.ndarray], groups: np.ndarray, n_classes: int,
                     seed: int = 0, n_bootstrap: int = N_BOOTSTRAP, primary: str = "logistic",
                     ) -> tuple[dict[str, dict[str, Interval]], Interval]:
    """Scores of each predictor (name -> ``[P]`` class indices; one must be ``majority``) with 95 % percentile
    intervals from resampling whole works with replacement (the same draws for every predictor), and the gain in
    balanced accuracy of ``primary`` over ``majority``."""
    works, members = np.unique(groups, return_inverse=True)
    by_work = [np.flatnonzero(members == w) for w in range(len(works))]
    rng = np.random.default_rng(seed)
    draws: dict[str, list[dict[str, float]]] = {name: [] for name in predictions}
    for _ in range(n_bootstrap):
        rows = np.concatenate([by_work[w] for w in rng.integers(0, len(works), len(works))])
        for name, predicted in predictions.items():
            draws[name].append(classification_scores(y[rows], predicted[rows], n_classes))
    points = {name: classification_scores(y, predicted, n_classes) for name, predicted in predictions.items()}
    scores = {name: {m: _interval(points[name][m], [d[m] for d in draws[name]]) for m in METRICS}
              for name in predictions}
    gains = [a["balanced_accuracy"] - b["balanced_accuracy"] for a, b in zip(draws[primary], draws["majority"])]
    gain = _interval(points[primary]["balanced_accuracy"] - points["majority"]["balanced_accuracy"], gains)
    return scores, gain


def _interval(point: float, draws: list[float]) -> Interval:
    low, high = np.percentile(draws, [2.5, 97.5]) if draws else (point, point)
    return Interval(round(point, 4), round(float(low), 4), round(float(high), 4))


def verdict(scores: dict[str, dict[str, Interval]], gain: Interval, n_works: int, primary: str = "logistic",
            finding: str = "the category is reflected in the embedding",
            meaning: str = "so it is audible in what the model encodes") -> str:
    """The careful reading: above baseline only when the whole 95 % interval of the gain is above zero."""
    probe, base = scores[primary]["balanced_accuracy"], scores["majority"]["balanced_accuracy"]
    numbers = (f"balanced accuracy {probe.point:.3f} [{probe.ci_low:.3f}, {probe.ci_high:.3f}] against "
               f"{base.point:.3f} for the majority class; gain {gain.point:+.3f} [{gain.ci_low:+.3f}, "
               f"{gain.ci_high:+.3f}] over {n_works} works")
    if gain.ci_low > 0:
        return (f"Above baseline: {finding} ({numbers}). The {primary} classifier recovers it on works it never "
                f"saw, {meaning}.")
    if gain.ci_high < 0:
        return (f"Not evidenced, below baseline: the {primary} classifier does worse than always answering the "
                f"most frequent value ({numbers}), a sign of overfitting to the training works, not of information "
                "about the category. This is no proof that the category is absent from the music or the features.")
    return (f"Not evidenced: the {primary} classifier does not beat the baseline ({numbers}). This is no proof "
            "that the category is absent from the music or the features: another probe, model or more works may "
            "find it.")


def confusion_png(y_true: np.ndarray, y_pred: np.ndarray, classes: list[str], out_path: str | Path,
                  title: str) -> None:
    """The confusion matrix (rows: true value, columns: predicted; counts) as a PNG."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure
    from sklearn.metrics import confusion_matrix

    matrix = confusion_matrix(y_true, y_pred, labels=np.arange(len(classes)))
    size = 2.5 + 0.6 * len(classes)
    figure = Figure(figsize=(size + 1.5, size))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    image = axes.imshow(matrix, cmap="Blues")
    figure.colorbar(image, ax=axes)
    for (i, j), count in np.ndenumerate(matrix):
        axes.text(j, i, str(count), ha="center", va="center",
                  color="white" if count > matrix.max() / 2 else "black")
    axes.set(xticks=range(len(classes)), yticks=range(len(classes)), xticklabels=classes, yticklabels=classes,
             xlabel="predicted", ylabel="true", title=title)
    figure.tight_layout()
    with atomic_path(out_path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)


def label_map_png(vectors: np.ndarray, values: np.ndarray, out_path: str | Path, title: str) -> None:
    """2-D t-SNE of unit performance vectors ``[P, D]`` (cosine distances), one colour per label value, legend."""
    from matplotlib import colormaps
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from csi_model.tsne_plot import tsne_embedding

    points = tsne_embedding(1.0 - np.clip(vectors @ vectors.T, -1.0, 1.0))
    classes, index = np.unique(np.asarray(values, dtype=str), return_inverse=True)
    palette = colormaps["tab10"] if len(classes) <= 10 else colormaps["hsv"].resampled(len(classes))
    colours = [palette(k) for k in range(len(classes))]
    figure = Figure(figsize=(8, 8))
    FigureCanvasAgg(figure)
    axes = figure.add_subplot()
    for k, name in enumerate(classes):
        shown = index == k
        axes.scatter(points[shown, 0], points[shown, 1], color=colours[k], s=30, label=f"{name} ({shown.sum()})")
    axes.legend(loc="best")
    axes.set_title(f"{title} ({len(values)} performances)")
    with atomic_path(out_path) as tmp:
        figure.savefig(tmp, format="png", dpi=100)
