"""GAN evaluation metrics on feature (or pixel) matrices: numpy, scipy and scikit-learn, no
TensorFlow.

Rows are images, columns features. FID and KID compare distributions; the classifier
two-sample test (C2ST) asks whether a classifier can tell the sets apart; the memorization
check asks whether generated images sit closer to training images than held-out real ones do.
"""
from __future__ import annotations

import numpy as np


def _as_matrix(x, name: str) -> np.ndarray:
    array = np.asarray(x, dtype=np.float64)
    if array.ndim != 2 or array.shape[0] < 2:
        raise ValueError(f"{name} must be an N x D matrix with N >= 2, got shape {array.shape}")
    if not np.all(np.isfinite(array)):
        raise ValueError(f"{name} holds {np.count_nonzero(~np.isfinite(array))} non-finite values")
    return array


def _same_width(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape[1] != b.shape[1]:
        raise ValueError(f"feature widths differ: {a.shape[1]} vs {b.shape[1]}")


# Hand-written: scipy.linalg.sqrtm is general (complex, unstable on rank-deficient covariances).
def _sqrt_psd(matrix: np.ndarray) -> np.ndarray:
    """Symmetric square root of a positive semi-definite matrix (negative round-off clipped)."""
    values, vectors = np.linalg.eigh((matrix + matrix.T) / 2)
    return (vectors * np.sqrt(np.clip(values, 0, None))) @ vectors.T


def frechet_distance(mu1, sigma1, mu2, sigma2) -> float:
    """||mu1 - mu2||^2 + Tr(S1 + S2 - 2 (S1 S2)^1/2), via the symmetric form
    Tr((S1^1/2 S2 S1^1/2)^1/2), which stays real when the covariances are rank-deficient."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    sigma1, sigma2 = np.asarray(sigma1, np.float64), np.asarray(sigma2, np.float64)
    root1 = _sqrt_psd(sigma1)
    cross = np.linalg.eigvalsh(root1 @ sigma2 @ root1)
    trace_sqrt = float(np.sum(np.sqrt(np.clip(cross, 0, None))))
    value = float(np.sum((mu1 - mu2) ** 2) + np.trace(sigma1) + np.trace(sigma2) - 2 * trace_sqrt)
    return max(value, 0.0)


def fid(features_a, features_b) -> float:
    """Fréchet distance between Gaussians fitted to two feature sets (Heusel et al. 2017)."""
    a, b = _as_matrix(features_a, "features_a"), _as_matrix(features_b, "features_b")
    _same_width(a, b)
    return frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))


def _polynomial_mmd2_unbiased(x: np.ndarray, y: np.ndarray) -> float:
    """Unbiased MMD^2 with k(u, v) = (u.v / d + 1)^3 (Bińkowski et al. 2018); scikit-learn has
    the kernel but not the unbiased estimator."""
    from sklearn.metrics.pairwise import polynomial_kernel

    def kernel(a, b):
        return polynomial_kernel(a, b, degree=3, gamma=1.0 / x.shape[1], coef0=1)

    kxx, kyy, kxy = kernel(x, x), kernel(y, y), kernel(x, y)
    m, n = len(x), len(y)
    return float((kxx.sum() - np.trace(kxx)) / (m * (m - 1))
                 + (kyy.sum() - np.trace(kyy)) / (n * (n - 1))
                 - 2 * kxy.mean())


def kid(features_a, features_b, *, subsets: int = 100, subset_size: int = 1000,
        seed: int = 0) -> tuple[float, float]:
    """Kernel Inception Distance: mean and std of unbiased polynomial MMD^2 over random subsets
    (size capped by the smaller set). Unbiased, so it can dip below 0 for equal distributions."""
    a, b = _as_matrix(features_a, "features_a"), _as_matrix(features_b, "features_b")
    _same_width(a, b)
    if subsets < 1:
        raise ValueError(f"subsets must be >= 1, got {subsets}")
    size = min(subset_size, len(a), len(b))
    rng = np.random.default_rng(seed)
    values = [_polynomial_mmd2_unbiased(a[rng.choice(len(a), size, replace=False)],
                                        b[rng.choice(len(b), size, replace=False)])
              for _ in range(subsets)]
    return float(np.mean(values)), float(np.std(values))


def pca_plane(data, components: int = 2) -> tuple[np.ndarray, np.ndarray]:
    """Projection of the rows on the first principal axes and each axis' share of variance."""
    from sklearn.decomposition import PCA

    pca = PCA(n_components=components, svd_solver="full")
    points = pca.fit_transform(_as_matrix(data, "data"))
    return points, pca.explained_variance_ratio_


def wilson_interval(successes: int, trials: int,
                    confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval of a binomial proportion (95% by default), scipy's."""
    from scipy.stats import binomtest

    if trials <= 0 or not 0 <= successes <= trials:
        raise ValueError(f"need 0 <= successes <= trials and trials > 0, got {successes}/{trials}")
    interval = binomtest(successes, trials).proportion_ci(confidence_level=confidence,
                                                          method="wilson")
    return float(interval.low), float(interval.high)


def classifier_two_sample_test(real, generated, *, seed: int = 0,
                               test_share: float = 0.5) -> dict:
    """C2ST: a standardized logistic regression learns real (1) vs generated (0) on half of a
    balanced sample and is scored on the other half. Accuracy 0.5 = indistinguishable."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import train_test_split
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    r, g = _as_matrix(real, "real"), _as_matrix(generated, "generated")
    _same_width(r, g)
    n = min(len(r), len(g))
    if n < 4:
        raise ValueError(f"C2ST needs at least 4 images per set, got {len(r)} and {len(g)}")
    rng = np.random.default_rng(seed)
    x = np.concatenate([r[rng.choice(len(r), n, replace=False)],
                        g[rng.choice(len(g), n, replace=False)]])
    y = np.concatenate([np.ones(n), np.zeros(n)])
    x_train, x_test, y_train, y_test = train_test_split(
        x, y, test_size=test_share, random_state=seed, stratify=y)
    model = make_pipeline(StandardScaler(), LogisticRegression(C=1.0, max_iter=2000))
    model.fit(x_train, y_train)
    correct = int(np.sum(model.predict(x_test) == y_test))
    low, high = wilson_interval(correct, len(y_test))
    return {"accuracy": correct / len(y_test), "ci95": [low, high], "test_size": len(y_test),
            "train_size": len(y_train), "classifier": "standardized logistic regression (C=1)"}


def nearest_neighbour(queries, references) -> tuple[np.ndarray, np.ndarray]:
    """Euclidean distance from each query row to its nearest reference row, and that row's index."""
    from sklearn.neighbors import NearestNeighbors

    q, r = _as_matrix(queries, "queries"), _as_matrix(references, "references")
    _same_width(q, r)
    distance, index = NearestNeighbors(n_neighbors=1).fit(r).kneighbors(q)
    return distance[:, 0], index[:, 0]


def memorization(generated_distances, heldout_distances, percentile: float = 1.0) -> dict:
    """Share of generated images nearer to a training image than the `percentile`-th percentile
    of held-out real images' nearest-training distances (a held-out image is no copy)."""
    gen = np.asarray(generated_distances, np.float64)
    held = np.asarray(heldout_distances, np.float64)
    if gen.size == 0 or held.size == 0:
        raise ValueError(f"need distances for both sets, got {gen.size} and {held.size}")
    threshold = float(np.percentile(held, percentile))
    return {"threshold": threshold, "percentile": percentile,
            "share_below": float(np.mean(gen < threshold)),
            "count_below": int(np.sum(gen < threshold)),
            "generated_median": float(np.median(gen)), "heldout_median": float(np.median(held)),
            "generated_min": float(gen.min()), "heldout_min": float(held.min())}
