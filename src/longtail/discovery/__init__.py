"""discovery stage: hyperbolic k-means, elbow, cluster labelling with GT anchors, AP and purity
(Weng et al. 2021, 3.3 and 4)."""

from longtail.discovery.elbow import elbow_curve, knee_point

__all__ = ["HyperbolicKMeans", "einstein_midpoints", "elbow_curve", "knee_point", "poincare_dist"]

_KMEANS = ("HyperbolicKMeans", "einstein_midpoints", "poincare_dist")


def __getattr__(name: str):
    # kmeans (torch + scikit-learn, ~4 s of CPU to import) loads on first use: `longtail <verb>` imports every
    # stage's cli module, i.e. this package, and most verbs need neither (make run: ~40 jobs)
    if name in _KMEANS:
        from longtail.discovery import kmeans

        return getattr(kmeans, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
